"""POP3 through a second real `oauth-relay serve` whose upstream is a small fake Office 365 POP.

For what the bed's Dovecot does not do: lock a mailbox (Dovecot's pop3_lock_session is off by
default, so a second session is never answered [IN-USE]), answer [SYS/TEMP], refuse a token
only after seconds (as Office 365 does), or never answer. This relay also has a short pre-login
time limit, so the time-out tests take seconds.
"""

import re
import socket
import time

import pytest

from tests.e2e.fake_upstream import ImplicitTlsFake, serve_only
from tests.e2e.harness import Relay, wait_for
from tests.e2e.pop3_support import RawPop3, plain

PREAUTH_TIMEOUT = 3
LOGIN_TIMEOUT = 3
SLOW_REFUSAL = 1.0   # seconds Office 365 takes to say no to a token (several, in real life)


class FakeOffice365Pop(ImplicitTlsFake):
    """TLS POP3 server: greeting, CAPA, two-step AUTH XOAUTH2 (answer chosen by the mailbox's
    local part), STAT, QUIT. Counts AUTH attempts per mailbox."""

    def _dialogue(self, conn, lines) -> None:
        conn.sendall(b"+OK The Microsoft Exchange POP3 service is ready. [fake]\r\n")
        for _ in range(100):
            line = lines.readline(65536).rstrip(b"\r\n")
            verb = line.split(b" ")[0].upper()
            if not line and self.closing.is_set() or verb == b"":
                return
            if verb == b"CAPA":
                conn.sendall(b"+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\n"
                             b"X-FAKE-CAPABILITY 42\r\nRESP-CODES\r\n.\r\n")
            elif line.upper() == b"AUTH XOAUTH2":
                conn.sendall(b"+ \r\n")
                self._authenticate(conn, lines.readline(65536).strip())
            elif verb == b"STAT":
                conn.sendall(b"+OK 0 0\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"+OK Microsoft Exchange Server POP3 server signing off.\r\n")
                return
            else:
                conn.sendall(b"-ERR Protocol error.\r\n")

    def _authenticate(self, conn, answer: bytes) -> None:
        mailbox = self._count_login(answer)
        kind = mailbox.split("-")[0]
        if kind == "inuse":
            conn.sendall(b"-ERR [IN-USE] Unable to lock maildrop.\r\n")
        elif kind == "temp":
            conn.sendall(b"-ERR [SYS/TEMP] Server Unavailable. 21\r\n")
        elif kind == "perm":
            conn.sendall(b"-ERR [SYS/PERM] POP3 is switched off for this mailbox.\r\n")
        elif kind == "delay":
            conn.sendall(b"-ERR [LOGIN-DELAY] Minimum time between logins not reached.\r\n")
        elif kind == "refused":
            time.sleep(SLOW_REFUSAL)
            conn.sendall(b"-ERR Authentication failure: unknown user name or bad password.\r\n")
        elif kind == "silent":
            self.closing.wait(LOGIN_TIMEOUT + 5)
        else:
            conn.sendall(b"+OK User successfully authenticated.\r\n")


@pytest.fixture(scope="module")
def fake(bed, tmp_path_factory):
    server = FakeOffice365Pop(bed, str(tmp_path_factory.mktemp("fake-o365")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def fake_relay(bed, fake, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("relay-fake-pop"), limits={"preauth_timeout": PREAUTH_TIMEOUT, "sessions_per_mailbox": 1})
    # Only the POP3 listeners: two workers start faster than six.
    serve_only(instance, "pop3", {
        f"  pop3: {{host: {bed.upstream_host}, port: {bed.pop3s_port}, security: tls}}\n":
            f"  pop3: {{host: 127.0.0.1, port: {fake.port}, security: tls}}\n",
        "  login_timeout: 15\n": f"  login_timeout: {LOGIN_TIMEOUT}\n"})
    instance.start()
    bed.idp.set_device_flow(interval=1)
    instance.owner = bed.new_account()
    instance.sign_in(instance.owner)
    yield instance
    instance.stop()


def local_user(relay, kind: str):
    """A local user whose (shared) mailbox tells the fake server how to answer."""
    name = f"{kind}-{time.monotonic_ns()}"
    relay.add_user(name, "secret pass", relay.owner, mailbox=f"{name}@example.test", protocols=["pop3"])
    return name, f"{name}@example.test"


def login(relay, bed, name: str) -> bytes:
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context(), timeout=30) as raw:
        raw.line()
        reply = raw.command("AUTH PLAIN " + plain(name, "secret pass"))
        if reply.startswith(b"+OK"):
            assert raw.command("STAT") == b"+OK 0 0"
        raw.command("QUIT")
        return reply


# ------------------------------------------------------------------ upstream answers

def test_mailbox_in_use_is_passed_through(fake_relay, bed, fake):
    name, mailbox = local_user(fake_relay, "inuse")
    mark = len(fake_relay.journal_text())
    assert login(fake_relay, bed, name).startswith(b"-ERR [IN-USE] ")
    assert fake.attempts[mailbox] == 1  # a locked mailbox is no reason to refresh the token
    wait_for(lambda: "[IN-USE] Unable to lock maildrop" in fake_relay.journal_text()[mark:], 10,
             "Office 365's answer in the journal")


@pytest.mark.parametrize("kind, reply, upstream_said", [
    pytest.param("temp", b"-ERR [SYS/TEMP] Office 365 is unavailable right now; try again later.",
                 "[SYS/TEMP] Server Unavailable. 21", id="temp"),
    pytest.param("delay", b"-ERR [SYS/TEMP] Office 365 is unavailable right now; try again later.",
                 "[LOGIN-DELAY] Minimum time between logins not reached.", id="delay"),
    # RFC 3206: SYS/PERM is "don't retry, tell the user to ask for help": it stays permanent.
    pytest.param("perm", b"-ERR [SYS/PERM] Office 365 reports a permanent problem with this mailbox; "
                 b"ask the administrator.", "[SYS/PERM] POP3 is switched off for this mailbox.", id="perm"),
])
def test_upstream_system_answers_are_no_token_problem(fake_relay, bed, fake, kind, reply, upstream_said):
    """[SYS/TEMP], [SYS/PERM], [LOGIN-DELAY]: no refresh, no "sign in again"; temporary stays
    temporary, permanent permanent, and the journal keeps Office 365's own words."""
    name, mailbox = local_user(fake_relay, kind)
    bed.idp.reset_counts()
    mark = len(fake_relay.journal_text())
    assert login(fake_relay, bed, name) == reply
    assert fake.attempts[mailbox] == 1
    assert not bed.idp.counts().get("token:refresh_token")
    journal = fake_relay.journal_text()[mark:]
    assert re.search(r"login_upstream_failed .*user=%s .*answer=.?-ERR %s"
                     % (re.escape(name), re.escape(upstream_said)), journal), journal


def test_sessions_per_mailbox_are_capped_and_released(fake_relay, bed, fake):
    name, _ = local_user(fake_relay, "ok")
    with RawPop3(fake_relay.ports["pop3-tls"], bed.ssl_context()) as first:
        first.line()
        assert first.command("AUTH PLAIN " + plain(name, "secret pass")).startswith(b"+OK")
        with RawPop3(fake_relay.ports["pop3-tls"], bed.ssl_context()) as second:
            second.line()
            assert second.command("AUTH PLAIN " + plain(name, "secret pass")).startswith(b"-ERR [SYS/TEMP] ")
        assert first.command("QUIT").startswith(b"+OK")
        assert first.closed()
    wait_for(lambda: login(fake_relay, bed, name).startswith(b"+OK"), 10, "the session count to drop",
             interval=0.2)


def test_slowly_refused_token_is_refreshed_once_then_given_up(fake_relay, bed, fake):
    name, mailbox = local_user(fake_relay, "refused")
    bed.idp.reset_counts()
    started = time.monotonic()
    reply = login(fake_relay, bed, name)
    assert reply.startswith(b"-ERR [AUTH] ")
    assert time.monotonic() - started >= 2 * SLOW_REFUSAL  # waited for both slow answers
    assert fake.attempts[mailbox] == 2
    assert bed.idp.counts().get("token:refresh_token") == 1


def test_upstream_that_never_answers_times_out(fake_relay, bed, fake):
    name, _ = local_user(fake_relay, "silent")
    started = time.monotonic()
    assert login(fake_relay, bed, name).startswith(b"-ERR [SYS/TEMP] ")
    assert LOGIN_TIMEOUT - 0.5 < time.monotonic() - started < LOGIN_TIMEOUT + 5


def test_capa_advertises_what_the_upstream_offers(fake_relay, bed, fake):
    name, _ = local_user(fake_relay, "ok")
    assert login(fake_relay, bed, name).startswith(b"+OK")
    with RawPop3(fake_relay.ports["pop3-starttls"]) as raw:
        raw.line()
        assert raw.command("CAPA").startswith(b"+OK")
        caps = raw.multiline().decode().split("\r\n")[:-1]
    assert "X-FAKE-CAPABILITY 42" in caps and "TOP" in caps and "UIDL" in caps
    # Ours, not the upstream's: no XOAUTH2 for the client, each capability once.
    assert caps.count("SASL PLAIN") == 1 and caps.count("USER") == 1 and caps.count("RESP-CODES") == 1
    assert "STLS" in caps and not any("XOAUTH2" in cap for cap in caps)


# ------------------------------------------------------------------ pre-login time limit

def test_idle_client_is_closed_after_the_preauth_time(fake_relay):
    with RawPop3(fake_relay.ports["pop3-starttls"]) as raw:
        started = time.monotonic()
        raw.line()
        assert raw.line(timeout=PREAUTH_TIMEOUT + 5) == b"-ERR Timeout, closing."
        assert raw.closed()
        assert PREAUTH_TIMEOUT - 0.5 < time.monotonic() - started < PREAUTH_TIMEOUT + 3


def test_preauth_time_is_bounded_even_for_a_chatty_client(fake_relay):
    with RawPop3(fake_relay.ports["pop3-starttls"]) as raw:
        started = time.monotonic()
        raw.line()
        replies = []
        for _ in range(4 * (PREAUTH_TIMEOUT + 3)):  # a valid command every 0.25 s
            try:
                raw.send(b"CAPA\r\n")
                replies.append(raw.line(timeout=2))
                if replies[-1].startswith(b"+OK"):
                    raw.multiline(timeout=2)
            except (EOFError, OSError):
                break
            if replies[-1] == b"-ERR Timeout, closing.":
                break
            time.sleep(0.25)
        assert replies[-1] == b"-ERR Timeout, closing.", replies[-3:]
        assert time.monotonic() - started < PREAUTH_TIMEOUT + 3


def test_tls_handshake_that_never_starts_is_cut(fake_relay):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", fake_relay.ports["pop3-tls"]), timeout=PREAUTH_TIMEOUT + 5) as sock:
        assert sock.recv(100) == b""  # no ClientHello: the relay closes without a word
    assert time.monotonic() - started < PREAUTH_TIMEOUT + 3
