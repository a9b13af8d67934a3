"""POP3 through a real `oauth-relay serve` against the bed's Dovecot: logins and the pipe.

110-style is the relay's pop3-starttls listener (STLS offered; plaintext logins allowed from
loopback by policy), 995-style its pop3-tls listener. The relay logs in to Dovecot's POP3S
with two-step AUTH XOAUTH2 and pipes bytes.
"""

import poplib
import threading
import time

import pytest

from tests.e2e.harness import AWKWARD_PASSWORD
from tests.e2e.pop3_support import RawPop3, deliver, dovecot_mailbox, message, new_user, plain, unstuff

DOTTED_BODY = "first line\n.a line starting with a dot\n..two dots\n.\nlast line\n"


@pytest.fixture(scope="module")
def reader(relay, bed):
    """A POP3-only user whose mailbox holds three messages that no test deletes."""
    user = new_user(relay, protocols=["pop3"])
    msgs = [message(f"reader {n}", DOTTED_BODY if n == 2 else f"message number {n}\n", user.account,
                    user.account) for n in (1, 2, 3)]
    stored = deliver(bed, user.account, msgs)
    user.wire = dovecot_mailbox(bed, user.account)  # POP3 order, as Dovecot sends them
    user.stored = [unstuff(body) for body in user.wire]
    assert sorted(user.stored) == sorted(stored)
    return user


def pop3(relay, bed, style: str) -> poplib.POP3:
    """A poplib connection: "110" plaintext, "110+stls", or "995" (implicit TLS)."""
    if style == "995":
        return poplib.POP3_SSL("127.0.0.1", relay.ports["pop3-tls"], context=bed.ssl_context(), timeout=30)
    conn = poplib.POP3("127.0.0.1", relay.ports["pop3-starttls"], timeout=30)
    if style == "110+stls":
        conn.stls(bed.ssl_context())
    return conn


# ------------------------------------------------------------------ before login

def capa_lines(raw: RawPop3):
    assert raw.command("CAPA").startswith(b"+OK")
    return raw.multiline().decode().split("\r\n")[:-1]


def test_greeting_and_capa_on_110_before_and_after_stls(relay, bed, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        assert raw.line().startswith(b"+OK")
        before = capa_lines(raw)
        raw.starttls(bed.ssl_context())
        after = capa_lines(raw)
    for caps in (before, after):
        assert "USER" in caps
        assert "SASL PLAIN" in caps
        # Learned from Dovecot (the worker probes CAPA at start, and every login relearns it).
        assert "TOP" in caps and "UIDL" in caps and "PIPELINING" in caps
        assert not any(cap.upper().startswith(("APOP", "SASL XOAUTH2", "SASL OAUTHBEARER")) for cap in caps)
        assert len(caps) == len(set(cap.split()[0].upper() for cap in caps)), caps
    assert "STLS" in before
    assert "STLS" not in after


def test_capa_on_995_has_no_stls(relay, bed, reader):
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        assert raw.line().startswith(b"+OK")
        caps = capa_lines(raw)
        assert "STLS" not in caps and "USER" in caps and "SASL PLAIN" in caps and "UIDL" in caps
        assert raw.command("STLS").startswith(b"-ERR")


def test_apop_is_refused_and_not_offered(relay, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        greeting = raw.line()
        assert b"<" not in greeting  # no APOP timestamp
        assert raw.command(f"APOP {reader.name} 0123456789abcdef0123456789abcdef").startswith(b"-ERR")
        assert raw.command("QUIT").startswith(b"+OK")
        assert raw.closed()


def test_transaction_commands_before_login_are_refused(relay, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        for command in ("STAT", "LIST", "RETR 1", "UIDL", "NOOP", "PASS x"):
            assert raw.command(command).startswith(b"-ERR"), command
        assert raw.command("QUIT").startswith(b"+OK")


# ------------------------------------------------------------------ logging in

@pytest.mark.parametrize("style", ["110", "110+stls", "995"])
def test_poplib_user_pass_with_an_awkward_password(relay, bed, reader, style):
    assert reader.password == AWKWARD_PASSWORD
    conn = pop3(relay, bed, style)
    try:
        assert conn.user(reader.name).startswith(b"+OK")
        assert conn.pass_(reader.password).startswith(b"+OK")  # poplib sends UTF-8
        count, size = conn.stat()
        assert count == 3
        assert size == sum(len(m.replace(b"\n", b"\r\n")) for m in reader.stored)
    finally:
        conn.quit()


@pytest.mark.parametrize("port_name", ["pop3-starttls", "pop3-tls"])
def test_auth_plain_with_initial_response(relay, bed, reader, port_name):
    context = bed.ssl_context() if port_name == "pop3-tls" else None
    with RawPop3(relay.ports[port_name], context) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain(reader.name, reader.password)).startswith(b"+OK")
        assert raw.command("STAT").startswith(b"+OK 3 ")
        assert raw.command("QUIT").startswith(b"+OK")


def test_auth_plain_without_initial_response_and_cancel(relay, bed, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN") == b"+ "
        assert raw.command("*").startswith(b"-ERR")
        assert raw.command("AUTH PLAIN") == b"+ "
        assert raw.command(plain(reader.name, reader.password)).startswith(b"+OK")
        assert raw.command("STAT").startswith(b"+OK 3 ")
        assert raw.command("QUIT").startswith(b"+OK")


def test_auth_plain_as_another_identity_is_refused(relay, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        reply = raw.command("AUTH PLAIN " + plain(reader.name, reader.password, authzid="someone-else"))
        assert reply.startswith(b"-ERR [AUTH]")


@pytest.mark.parametrize("port_name", ["pop3-starttls", "pop3-tls"])
def test_commands_split_byte_by_byte(relay, bed, reader, port_name):
    """One byte per TCP segment (RawPop3 turns Nagle off), before and after login."""
    context = bed.ssl_context() if port_name == "pop3-tls" else None
    with RawPop3(relay.ports[port_name], context) as raw:
        raw.line()
        raw.send_split(f"USER {reader.name}\r\n".encode())
        assert raw.line().startswith(b"+OK")
        raw.send_split(f"PASS {reader.password}\r\n".encode("utf-8"))
        assert raw.line().startswith(b"+OK")
        raw.send_split(b"STAT\r\n")  # after login too: the pipe forwards whatever arrives
        assert raw.line().startswith(b"+OK 3 ")
        raw.send_split(b"QUIT\r\n")
        assert raw.line().startswith(b"+OK")
        assert raw.closed()


def test_commands_coalesced_in_one_write(relay, bed, reader):
    """CAPA, USER, PASS and transaction commands in a single packet: nothing is lost."""
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        raw.send(f"CAPA\r\nUSER {reader.name}\r\nPASS {reader.password}\r\nSTAT\r\nUIDL\r\nQUIT\r\n"
                 .encode("utf-8"))
        assert raw.line().startswith(b"+OK")
        assert b"USER" in raw.multiline()
        assert raw.line().startswith(b"+OK")     # USER
        assert raw.line().startswith(b"+OK")     # PASS: logged in
        assert raw.line().startswith(b"+OK 3 ")  # STAT, from Dovecot
        assert raw.line().startswith(b"+OK")     # UIDL
        assert len(raw.multiline().split(b"\r\n")) == 4
        assert raw.line().startswith(b"+OK")     # QUIT
        assert raw.closed()


# ------------------------------------------------------------------ after login: the pipe

def test_stat_list_uidl_top_retr(relay, bed, reader):
    conn = pop3(relay, bed, "995")
    try:
        conn.user(reader.name)
        conn.pass_(reader.password)
        _, listing, _ = conn.list()
        sizes = [int(line.split()[1]) for line in listing]
        assert sizes == [len(m.replace(b"\n", b"\r\n")) for m in reader.stored]
        _, uids, _ = conn.uidl()
        assert len(uids) == 3 and len({line.split()[1] for line in uids}) == 3
        assert conn.uidl(2).split()[2] == uids[1].split()[1]
        dotted = next(n for n, m in enumerate(reader.stored, 1) if b"Subject: reader 2" in m)
        _, top, _ = conn.top(dotted, 2)
        headers, _, body = b"\n".join(top).partition(b"\n\n")
        assert b"Subject: reader 2" in headers
        assert body == b"first line\n.a line starting with a dot"  # poplib un-stuffed it
        for number, stored in enumerate(reader.stored, 1):
            _, lines, _ = conn.retr(number)
            assert b"\n".join(lines) + b"\n" == stored  # poplib un-stuffs the dots
        assert conn.noop().startswith(b"+OK")
    finally:
        conn.quit()


def test_retr_is_byte_exact_and_dot_stuffed(relay, bed, reader):
    """The relay forwards exactly what Dovecot sends, dot-stuffing included."""
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain(reader.name, reader.password)).startswith(b"+OK")
        for number, expected in enumerate(reader.wire, 1):
            assert raw.command(f"RETR {number}").startswith(b"+OK")
            assert raw.multiline() == expected
        assert raw.command("QUIT").startswith(b"+OK")
    dotted = [body for body in reader.wire if b"Subject: reader 2" in body]
    assert b"\r\n..a line starting with a dot\r\n...two dots\r\n..\r\n" in dotted[0]


def big_message(account: str, size: int) -> bytes:
    """A message of about `size` bytes: numbered 78-octet lines, every 500th dot-led."""
    head = (f"From: {account}\r\nTo: {account}\r\nSubject: big\r\n"
            f"Message-ID: <big-{size}@pop3-tests>\r\n\r\n").encode()
    lines = []
    for number in range(size // 80):
        lead = b"." if number % 500 == 0 else b"x"
        lines.append(lead + b"%08d " % number + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n")
    return head + b"".join(lines)


@pytest.fixture(scope="module")
def big(relay, bed):
    user = new_user(relay, protocols=["pop3"])
    user.stored = deliver(bed, user.account, [big_message(user.account, 25 * 1024 * 1024)])
    user.wire = dovecot_mailbox(bed, user.account)
    assert [unstuff(body) for body in user.wire] == user.stored
    return user


def test_retr_of_a_25_mb_message_is_byte_exact(relay, bed, big):
    stored = big.stored[0]
    assert len(stored) > 25 * 1000 * 1000
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context(), timeout=60) as raw:
        raw.line()
        assert raw.command("USER " + big.name).startswith(b"+OK")
        assert raw.command("PASS " + big.password).startswith(b"+OK")
        assert raw.command("LIST 1") == b"+OK 1 %d" % len(stored.replace(b"\n", b"\r\n"))
        assert raw.command("RETR 1").startswith(b"+OK")
        started = time.monotonic()
        body = raw.multiline()
        elapsed = time.monotonic() - started
        assert body == big.wire[0]
        assert body.count(b"\r\n..") == stored.count(b"\n.") > 100  # every dot-led line was stuffed
        assert unstuff(body) == stored
        assert elapsed < 15, f"25 MB took {elapsed:.1f} s"
        assert raw.command("QUIT").startswith(b"+OK")


def test_retr_of_a_25_mb_message_with_poplib_over_stls(relay, bed, big):
    conn = pop3(relay, bed, "110+stls")
    try:
        conn.user(big.name)
        conn.pass_(big.password)
        _, lines, octets = conn.retr(1)
        assert b"\n".join(lines) + b"\n" == big.stored[0]
    finally:
        conn.quit()


# ------------------------------------------------------------------ DELE and the UPDATE state

@pytest.fixture
def three(relay, bed):
    """A fresh POP3 user with three messages (for tests that delete)."""
    user = new_user(relay, protocols=["pop3"], password="simple")
    deliver(bed, user.account, [message(f"m{n}", f"body {n}\n", user.account, user.account) for n in (1, 2, 3)])
    user.stored = [unstuff(body) for body in dovecot_mailbox(bed, user.account)]
    return user


def login(relay, bed, user, style="995") -> poplib.POP3:
    conn = pop3(relay, bed, style)
    try:
        conn.user(user.name)
        conn.pass_(user.password)
    except BaseException:
        conn.close()
        raise
    return conn


def test_dele_then_quit_removes_the_message_upstream(relay, bed, three):
    conn = login(relay, bed, three)
    _, uids, _ = conn.uidl()
    assert conn.dele(2).startswith(b"+OK")
    assert conn.stat()[0] == 2
    assert conn.quit().startswith(b"+OK")
    assert sorted(bed.dovecot.messages(three.account)) == sorted([three.stored[0], three.stored[2]])
    # A second login sees the change.
    again = login(relay, bed, three, "110")
    try:
        assert again.stat()[0] == 2
        _, uids_after, _ = again.uidl()
        assert [line.split()[1] for line in uids_after] == [uids[0].split()[1], uids[2].split()[1]]
        _, lines, _ = again.retr(2)
        assert b"\n".join(lines) + b"\n" == three.stored[2]
    finally:
        again.quit()


def test_dele_without_quit_or_after_rset_keeps_the_message(relay, bed, three):
    # RSET undoes the marks.
    conn = login(relay, bed, three)
    conn.dele(1)
    assert conn.rset().startswith(b"+OK")
    conn.quit()
    assert len(bed.dovecot.messages(three.account)) == 3
    # A client that drops the connection after DELE never reaches the UPDATE state.
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain(three.name, three.password)).startswith(b"+OK")
        assert raw.command("DELE 1").startswith(b"+OK")
    time.sleep(0.5)
    again = login(relay, bed, three, "110+stls")
    try:
        assert again.stat()[0] == 3
    finally:
        again.quit()
    assert len(bed.dovecot.messages(three.account)) == 3


def test_other_sessions_are_served_during_a_big_retr(relay, bed, big):
    """A pipe that never has to wait must still let the worker's other sessions run."""
    result = {}

    def download():
        with RawPop3(relay.ports["pop3-tls"], bed.ssl_context(), timeout=60) as raw:
            raw.line()
            raw.command("AUTH PLAIN " + plain(big.name, big.password))
            for _ in range(3):
                raw.send(b"RETR 1\r\n")
                raw.line()
                result.setdefault("started", time.monotonic())
                raw.multiline()
            result["done"] = time.monotonic()
            raw.command("QUIT")

    thread = threading.Thread(target=download)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "started" not in result and time.monotonic() < deadline:
            time.sleep(0.01)
        greetings = []
        while "done" not in result and time.monotonic() < deadline and len(greetings) < 20:
            started = time.monotonic()
            with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as other:
                assert other.line().startswith(b"+OK")
                greetings.append(time.monotonic() - started)
    finally:
        thread.join(60)
    assert "done" in result
    assert greetings and max(greetings) < 2.0, greetings


# ------------------------------------------------------------------ garbage before login

def test_garbage_budget_closes_the_connection(relay, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        for number in range(1, 10):
            assert raw.command(f"GARBAGE {number}") == b"-ERR Unknown command"
        assert raw.command("CAPA").startswith(b"+OK")  # good commands do not reset nor count
        raw.multiline()
        raw.send(b"\x00\xff\r\n")
        assert raw.line().startswith(b"-ERR")
        assert raw.line() == b"-ERR Too many bad commands, closing."
        assert raw.closed()


def test_over_long_lines_are_refused_not_buffered(relay, reader):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        raw.send(b"USER " + b"x" * 100000 + b"\r\n")
        assert raw.line() == b"-ERR Line too long"
        # The rest of the long line was thrown away, and the session still works.
        assert raw.command("USER " + reader.name).startswith(b"+OK")
        assert raw.command("PASS " + reader.password).startswith(b"+OK")
        assert raw.command("STAT").startswith(b"+OK 3 ")
        raw.command("QUIT")


def test_nine_bad_commands_still_allow_a_login(relay, bed, reader):
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        raw.line()
        for _ in range(9):
            assert raw.command("HELO").startswith(b"-ERR")
        assert raw.command("AUTH PLAIN " + plain(reader.name, reader.password)).startswith(b"+OK")
        # After login Dovecot answers; the relay's budget no longer applies.
        for _ in range(12):
            assert raw.command("HELO").startswith(b"-ERR")
        assert raw.command("STAT").startswith(b"+OK 3 ")
        raw.command("QUIT")
