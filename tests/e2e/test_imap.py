"""IMAP through a real `oauth-relay serve` against the bed's Dovecot, with real clients.

Python's imaplib, curl and fetchmail play the legacy programs; a raw socket client sends the
exact bytes of each LOGIN / AUTHENTICATE form, byte-by-byte splits and pipelined commands.
The users are module-scoped (one `oauth-relay user add` + `oauth-relay login` each) and no
test depends on another's mail: tests that look at mail use an account of their own.
"""

from __future__ import annotations

import base64
import imaplib
import os
import re
import shutil
import subprocess
import time
import uuid
from email.message import EmailMessage
from typing import List, Optional

import pytest

from tests.e2e.harness import AWKWARD_PASSWORD, wait_for
from tests.e2e.raw_client import RawClient

SIMPLE_PASSWORD = "Atom-pass_42.x"       # a valid IMAP atom
MAX_LINES = 10000                        # no reply of these tests has more lines
TIMEOUT = 20.0


# ------------------------------------------------------------------------------- raw client
class RawImap(RawClient):
    """Sends exactly the bytes it is given; reads lines with a deadline."""

    BUFFER = bytes
    NODELAY = True

    @classmethod
    def open(cls, relay, bed, mode: str = "plain") -> "RawImap":
        """mode: "plain" (143, no TLS), "starttls" (143 + STARTTLS) or "tls" (993)."""
        if mode == "tls":
            client = cls(relay.ports["imap-tls"], bed.ssl_context())
            client.greeting = client.line()
            return client
        client = cls(relay.ports["imap-starttls"])
        client.greeting = client.line()
        if mode == "starttls":
            client.send(b"S1 STARTTLS\r\n")
            assert client.until(b"S1")[-1].startswith(b"S1 OK")
            client.start_tls(bed.ssl_context())
        return client

    def line(self, timeout: Optional[float] = None) -> bytes:
        """The next line without CRLF; b"" at end of file."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buffer:
            if not self._fill(deadline):
                rest, self.buffer = self.buffer, b""
                return rest
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def until(self, tag: bytes, timeout: Optional[float] = None) -> List[bytes]:
        """Lines up to and including the tagged one (or end of file)."""
        lines = []
        for _ in range(MAX_LINES):
            line = self.line(timeout)
            lines.append(line)
            if not line or line.startswith(tag + b" "):
                return lines
        raise AssertionError(f"no {tag!r} reply in {MAX_LINES} lines")

    def command(self, tag: bytes, text: bytes) -> List[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout` (bytes before it ignored)."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LINES):
            self.buffer = b""
            if not self._fill(deadline):
                return True
        return False


def quoted(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def plain_ir(name: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + name.encode("utf-8") + b"\0" + password.encode("utf-8"))


def assert_logged_in(lines: List[bytes], tag: bytes) -> None:
    last = lines[-1]
    assert last.startswith(tag + b" OK"), lines
    # The upstream's post-login capabilities, without what only makes sense before login.
    match = re.search(rb"\[CAPABILITY ([^\]]*)\]", last)
    assert match, last
    atoms = match.group(1).upper().split()
    assert b"IMAP4REV1" in atoms and b"IDLE" in atoms, last
    assert not [a for a in atoms if a.startswith(b"AUTH=") or a in (b"STARTTLS", b"LOGINDISABLED")], last


def select_and_logout(client: RawImap, tag: bytes = b"z") -> None:
    """Proves the session reaches Dovecot: SELECT answers with its untagged data."""
    lines = client.command(tag + b"1", b"SELECT INBOX")
    assert lines[-1].startswith(tag + b"1 OK"), lines
    assert any(line.endswith(b" EXISTS") for line in lines), lines
    lines = client.command(tag + b"2", b"LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(tag + b"2 OK"), lines
    assert client.closed(), "the relay left the connection open after LOGOUT"


def message(subject: str, body: str = "Hello through the relay.\r\n", sender: str = "test@example.test",
            to: str = "rcpt@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.test>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def imaplib_conn(relay, bed, mode: str) -> imaplib.IMAP4:
    if mode == "tls":
        conn = imaplib.IMAP4_SSL("127.0.0.1", relay.ports["imap-tls"], ssl_context=bed.ssl_context(),
                                 timeout=TIMEOUT)
    else:
        conn = imaplib.IMAP4("127.0.0.1", relay.ports["imap-starttls"], timeout=TIMEOUT)
        if mode == "starttls":
            conn.starttls(bed.ssl_context())
    conn._encoding = "utf-8"  # quoted UTF-8 passwords (imaplib's default is ASCII)
    return conn


def close_quietly(conn: imaplib.IMAP4) -> None:
    try:
        conn.logout()
    except (imaplib.IMAP4.error, OSError):
        pass
    try:
        conn.shutdown()
    except OSError:
        pass


def journal_since(relay, offset: int) -> str:
    return relay.journal_text()[offset:]


# ------------------------------------------------------------------------------- users
@pytest.fixture(scope="module")
def awkward(relay):
    """A user whose password has every awkward character (tests only APPEND to its Trash)."""
    return relay.new_user(password=AWKWARD_PASSWORD)


@pytest.fixture(scope="module")
def simple(relay):
    return relay.new_user(password=SIMPLE_PASSWORD)


# ------------------------------------------------------------------------------- imaplib
@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_imaplib_login_with_awkward_password(relay, bed, awkward, mode):
    conn = imaplib_conn(relay, bed, mode)
    try:
        typ, data = conn.login(awkward.name, awkward.password)
        assert typ == "OK", data
        typ, data = conn.capability()  # answered by Dovecot now
        assert typ == "OK" and b"AUTH=PLAIN" not in data[0] and b"IDLE" in data[0], data
        typ, data = conn.select("INBOX")
        assert typ == "OK", data
        typ, data = conn.list()
        assert typ == "OK" and any(b"INBOX" in line for line in data), data
        typ, data = conn.noop()
        assert typ == "OK"
    finally:
        close_quietly(conn)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_imaplib_login_with_a_literal(relay, bed, awkward, mode):
    """imaplib sends the password as a synchronising literal when `conn.literal` is set."""
    conn = imaplib_conn(relay, bed, mode)
    conn._encoding = "ascii"
    try:
        conn.literal = awkward.password.encode("utf-8")
        typ, data = conn._simple_command("LOGIN", awkward.name)
        assert typ == "OK", data
        conn.state = "AUTH"
        assert conn.select("INBOX")[0] == "OK"
    finally:
        close_quietly(conn)


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_imaplib_authenticate_plain_continuation(relay, bed, awkward, mode):
    conn = imaplib_conn(relay, bed, mode)
    try:
        credentials = b"\0" + awkward.name.encode() + b"\0" + awkward.password.encode("utf-8")
        typ, data = conn.authenticate("PLAIN", lambda challenge: credentials)
        assert typ == "OK", data
        assert conn.select("INBOX", readonly=True)[0] == "OK"
    finally:
        close_quietly(conn)


# ------------------------------------------------------------------------------- raw forms
def test_greeting_and_capabilities_before_login(relay, bed):
    with RawImap.open(relay, bed, "plain") as client:
        assert client.greeting.startswith(b"* OK [CAPABILITY "), client.greeting
        for atom in (b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"AUTH=PLAIN", b"STARTTLS"):
            assert atom in client.greeting.split(b"]")[0].split(), client.greeting
        lines = client.command(b"a1", b"CAPABILITY")
        assert lines[0].startswith(b"* CAPABILITY ") and lines[-1].startswith(b"a1 OK"), lines
        assert client.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")
        lines = client.command(b"a3", b'ID ("name" "legacy")')
        assert lines[-1].startswith(b"a3 OK"), lines
        # Commands that need a mailbox get a clear answer before login, never a hang.
        for tag, command in ((b"a4", b"SELECT INBOX"), (b"a5", b"FETCH 1 BODY[]"), (b"a6", b"IDLE")):
            last = client.command(tag, command)[-1]
            assert last.startswith(tag + b" NO") or last.startswith(tag + b" BAD"), last
        lines = client.command(b"a7", b"LOGOUT")
        assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"a7 OK"), lines
        assert client.closed()
    with RawImap.open(relay, bed, "tls") as client:
        caps = client.greeting.split(b"]")[0].split()
        assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps, client.greeting


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_login_atom(relay, bed, simple, mode):
    with RawImap.open(relay, bed, mode) as client:
        lines = client.command(b"a1", b"LOGIN " + simple.name.encode() + b" " + SIMPLE_PASSWORD.encode())
        assert_logged_in(lines, b"a1")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_login_quoted_with_escapes(relay, bed, awkward, mode):
    assert '"' in awkward.password and "\\" in awkward.password
    with RawImap.open(relay, bed, mode) as client:
        lines = client.command(b"a1", b"LOGIN " + quoted(awkward.name) + b" " + quoted(awkward.password))
        assert_logged_in(lines, b"a1")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_login_synchronising_literal(relay, bed, awkward, mode):
    password = awkward.password.encode("utf-8")
    with RawImap.open(relay, bed, mode) as client:
        client.send(b"a1 LOGIN " + awkward.name.encode() + b" {%d}\r\n" % len(password))
        assert client.line().startswith(b"+"), "no continuation for a synchronising literal"
        client.send(password + b"\r\n")
        assert_logged_in(client.until(b"a1"), b"a1")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_login_non_synchronising_literals(relay, bed, awkward, mode):
    """LITERAL+: both arguments as {n+}, all in one write, no continuation requested."""
    name, password = awkward.name.encode(), awkward.password.encode("utf-8")
    with RawImap.open(relay, bed, mode) as client:
        client.send(b"a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(name), name, len(password), password))
        lines = client.until(b"a1")
        assert not [line for line in lines if line.startswith(b"+")], lines
        assert_logged_in(lines, b"a1")
        select_and_logout(client)


def test_login_synchronising_literal_for_both(relay, bed, awkward):
    name, password = awkward.name.encode(), awkward.password.encode("utf-8")
    with RawImap.open(relay, bed, "starttls") as client:
        client.send(b"a1 LOGIN {%d}\r\n" % len(name))
        assert client.line().startswith(b"+")
        client.send(name + b" {%d}\r\n" % len(password))
        assert client.line().startswith(b"+")
        client.send(password + b"\r\n")
        assert_logged_in(client.until(b"a1"), b"a1")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_authenticate_plain_sasl_ir(relay, bed, awkward, mode):
    with RawImap.open(relay, bed, mode) as client:
        lines = client.command(b"a1", b"AUTHENTICATE PLAIN " + plain_ir(awkward.name, awkward.password))
        assert_logged_in(lines, b"a1")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_authenticate_plain_continuation_and_cancel(relay, bed, awkward, mode):
    with RawImap.open(relay, bed, mode) as client:
        client.send(b"a1 AUTHENTICATE PLAIN\r\n")
        assert client.line().startswith(b"+")
        client.send(b"*\r\n")
        assert client.until(b"a1")[-1].startswith(b"a1 BAD"), "cancel must end the exchange with BAD"
        client.send(b"a2 AUTHENTICATE PLAIN\r\n")
        assert client.line().startswith(b"+")
        client.send(plain_ir(awkward.name, awkward.password) + b"\r\n")
        assert_logged_in(client.until(b"a2"), b"a2")
        select_and_logout(client)


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_commands_split_byte_by_byte(relay, bed, awkward, mode):
    password = awkward.password.encode("utf-8")
    with RawImap.open(relay, bed, mode) as client:
        client.send_split(b"a0 CAPABILITY\r\n")
        assert client.until(b"a0")[-1].startswith(b"a0 OK")
        client.send_split(b"a1 LOGIN " + quoted(awkward.name) + b" {%d+}\r\n" % len(password) + password + b"\r\n")
        assert_logged_in(client.until(b"a1"), b"a1")
        # After login the bytes go through the pipe: split there too.
        client.send_split(b"a2 SELECT INBOX\r\n")
        assert client.until(b"a2")[-1].startswith(b"a2 OK")
        client.send_split(b"a3 LOGOUT\r\n")
        assert client.until(b"a3")[-1].startswith(b"a3 OK")


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_commands_coalesced_in_one_write(relay, bed, awkward, mode):
    """Pipelined: commands before login are answered by the relay, those after it by Dovecot,
    including a LITERAL+ APPEND whose message text looks like commands (the relay must not
    read it)."""
    literal = message("pipelined", "a9 LOGIN someone else\r\n{5}\r\n")
    with RawImap.open(relay, bed, mode) as client:
        client.send(b"a1 CAPABILITY\r\na2 NOOP\r\n"
                    b"a3 LOGIN " + quoted(awkward.name) + b" " + quoted(awkward.password) + b"\r\n"
                    b"a4 SELECT INBOX\r\na5 NOOP\r\n"
                    b"a6 APPEND Trash {%d+}\r\n%s\r\na7 LOGOUT\r\n" % (len(literal), literal))
        lines = client.until(b"a7")
        tagged = [line.split(b" ")[0] for line in lines if not line.startswith((b"*", b"+"))]
        assert tagged == [b"a1", b"a2", b"a3", b"a4", b"a5", b"a6", b"a7"], lines
        assert all(b" OK" in line for line in lines if line[:2] == b"a" and line[1:2].isdigit()), lines
        assert any(line.endswith(b" EXISTS") for line in lines), lines


def test_login_after_a_failed_attempt_in_the_same_connection(relay, bed, awkward):
    with RawImap.open(relay, bed, "tls") as client:
        last = client.command(b"a1", b"LOGIN " + quoted(awkward.name) + b' "wrong password"')[-1]
        assert last.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), last
        lines = client.command(b"a2", b"LOGIN " + quoted(awkward.name) + b" " + quoted(awkward.password))
        assert_logged_in(lines, b"a2")
        select_and_logout(client)


# ------------------------------------------------------------------------------- curl
def _curl(relay, bed, user, url: str, *extra: str) -> subprocess.CompletedProcess:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    return subprocess.run([curl, "-sS", "-v", "--max-time", "20", "--cacert", bed.ca_file,
                           "-u", f"{user.name}:{user.password}", *extra, url],
                          capture_output=True, timeout=40)


@pytest.fixture(scope="module")
def curl_user(relay, bed):
    """A user with one message in its inbox, put there straight into Dovecot."""
    user = relay.new_user()
    conn = bed.imap_login(user.account, bed.token_for(user.account))
    try:
        typ, _ = conn.append("INBOX", None, None, message("for curl", "curl was here\r\n"))
        assert typ == "OK"
    finally:
        close_quietly(conn)
    return user


@pytest.mark.parametrize("scheme, port, extra, command", [
    ("imap", "imap-starttls", (), b"AUTHENTICATE PLAIN"),                        # plaintext
    ("imap", "imap-starttls", ("--ssl-reqd",), b"AUTHENTICATE PLAIN"),         # STARTTLS
    ("imaps", "imap-tls", ("--sasl-ir",), b"AUTHENTICATE PLAIN "),               # implicit TLS
    # (curl 7.88 has no ";AUTH=+LOGIN": it always takes AUTHENTICATE when AUTH=PLAIN is offered)
])
def test_curl(relay, bed, curl_user, scheme, port, extra, command):
    base = f"{scheme}://127.0.0.1:{relay.ports[port]}"
    result = _curl(relay, bed, curl_user, base + "/INBOX;UID=1", *extra)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    assert b"curl was here" in result.stdout, result.stdout[-2000:]
    assert b"Subject: for curl" in result.stdout
    sent = [line[2:] for line in result.stderr.splitlines() if line.startswith(b"> ")]
    assert any(line.split(b" ", 1)[-1].startswith(command) for line in sent), sent
    if "--ssl-reqd" in extra:
        assert any(line.endswith(b"STARTTLS") for line in sent), sent
    listing = _curl(relay, bed, curl_user, base + "/", *extra)
    assert listing.returncode == 0, listing.stderr.decode(errors="replace")[-3000:]
    assert b"INBOX" in listing.stdout


# ------------------------------------------------------------------------------- fetchmail
def _rc_string(text: str) -> str:
    """A fetchmailrc string: its lexer ends a string at the first quote of its kind, then
    processes backslash escapes."""
    assert "'" not in text
    return "'" + text.replace("\\", "\\\\") + "'"


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_fetchmail(relay, bed, tmp_path, mode):
    """fetchmail as the legacy program: fetches (and deletes) a message through the relay."""
    fetchmail = shutil.which("fetchmail")
    if fetchmail is None:
        pytest.fail("fetchmail is not installed (apt-get install fetchmail)")
    user = relay.new_user()
    conn = bed.imap_login(user.account, bed.token_for(user.account))
    try:
        assert conn.append("INBOX", None, None, message("for fetchmail", "fetchmail was here\r\n"))[0] == "OK"
    finally:
        close_quietly(conn)
    out = tmp_path / "out"
    out.mkdir()
    security = {
        "plain": "sslproto ''",  # no opportunistic STARTTLS
        "starttls": f"sslproto tls1.2+ sslcertck sslcertfile {_rc_string(bed.ca_file)} sslcommonname localhost",
        "tls": f"ssl sslcertck sslcertfile {_rc_string(bed.ca_file)} sslcommonname localhost",
    }[mode]
    port = relay.ports["imap-tls" if mode == "tls" else "imap-starttls"]
    mda = tmp_path / "save.sh"
    mda.write_text(f'#!/bin/sh\ncat > "{out}/msg.$$"\n')
    mda.chmod(0o700)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n"
        f"poll 127.0.0.1 service {port} protocol IMAP auth password timeout 20\n"
        f"  user {_rc_string(user.name)} password {_rc_string(user.password)} is {_rc_string('nobody')}\n"
        f"  {security}\n"
        f"  mda {_rc_string(str(mda))}\n",
        encoding="utf-8")
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path), LC_ALL="C.UTF-8")
    result = subprocess.run([fetchmail, "-f", str(rc), "-i", str(tmp_path / "ids"), "-v", "--nodetach"],
                            capture_output=True, timeout=60, env=env, cwd=str(tmp_path))
    log = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, log[-4000:]
    fetched = [path.read_bytes() for path in out.iterdir()]
    assert len(fetched) == 1 and b"fetchmail was here" in fetched[0], log[-3000:]
    if mode == "plain":
        assert "STARTTLS" not in re.findall(r"IMAP> \S+ (\S+)", log), log[-3000:]
    elif mode == "starttls":
        assert re.search(r"IMAP> \S+ STARTTLS", log), log[-3000:]
    # fetchmail flagged it \Deleted and expunged it: through the relay, in Dovecot itself.
    wait_for(lambda: not bed.dovecot.messages(user.account), 10, "fetchmail's delete to reach Dovecot")


# ------------------------------------------------------------------------------- big message
def _big_message(size: int) -> bytes:
    head = message("big one").split(b"\r\n\r\n", 1)[0]
    body = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return head.replace(b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64") \
        + b"\r\nX-Big-Marker: " + uuid.uuid4().hex.encode() + b"\r\n\r\n" + body


def test_append_fetch_search_25_mb(relay, bed):
    user = relay.new_user()
    data = _big_message(25 * 1024 * 1024)
    marker = re.search(rb"X-Big-Marker: (\w+)", data).group(1).decode()
    small = message("small one")
    conn = imaplib_conn(relay, bed, "tls")
    try:
        assert conn.login(user.name, user.password)[0] == "OK"
        started = time.monotonic()
        typ, reply = conn.append("INBOX", None, None, data)
        assert typ == "OK", reply
        assert conn.append("INBOX", "(\\Seen)", None, small)[0] == "OK"
        assert conn.select("INBOX")[1] == [b"2"]
        typ, found = conn.uid("SEARCH", None, "HEADER", "X-Big-Marker", marker)
        assert typ == "OK" and len(found[0].split()) == 1, found
        uid = found[0].split()[0]
        assert conn.uid("SEARCH", None, "LARGER", str(20 * 1024 * 1024))[1] == [uid]
        assert conn.search(None, "UNSEEN")[1] == [b"1"]
        typ, fetched = conn.uid("FETCH", uid, "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        assert fetched[0][1] == data, "the 25 MB message came back changed through the relay"
        assert b"RFC822.SIZE %d" % len(data) in fetched[0][0], fetched[0][0]
        elapsed = time.monotonic() - started
        assert elapsed < 60, f"25 MB up and down took {elapsed:.1f} s"
    finally:
        close_quietly(conn)
    # What Dovecot itself stored (its maildir keeps LF line ends).
    stored = bed.dovecot.messages(user.account)
    assert len(stored) == 2 and stored[0] == data.replace(b"\r\n", b"\n")
    direct = bed.imap_login(user.account, bed.token_for(user.account), implicit_tls=True)
    try:
        direct.select("INBOX", readonly=True)
        assert direct.fetch("1", "(BODY.PEEK[])")[1][0][1] == data
    finally:
        close_quietly(direct)


# ------------------------------------------------------------------------------- IDLE
def test_idle_woken_by_mail_through_postfix(relay, bed):
    user = relay.new_user()
    with RawImap.open(relay, bed, "tls") as client:
        assert_logged_in(client.command(b"a1", b"LOGIN " + quoted(user.name) + b" " + quoted(user.password)), b"a1")
        lines = client.command(b"a2", b"SELECT INBOX")
        assert b"* 0 EXISTS" in lines, lines
        client.send(b"a3 IDLE\r\n")
        assert client.line().startswith(b"+"), "IDLE got no continuation"
        smtp = bed.smtp_login(user.account, bed.token_for(user.account))
        try:
            smtp.sendmail(user.account, [user.account], message("wake up", to=user.account, sender=user.account))
        finally:
            smtp.quit()
        line = client.line(timeout=40)
        assert line == b"* 1 EXISTS", line
        client.send(b"DONE\r\n")
        lines = client.until(b"a3")
        assert lines[-1].startswith(b"a3 OK"), lines
        lines = client.command(b"a4", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"Subject: wake up" in b"\n".join(lines), lines
        client.command(b"a5", b"LOGOUT")


# ------------------------------------------------------------------------------- shared mailbox
def test_shared_mailbox(relay, bed):
    delegate, shared = bed.new_account("delegate"), bed.new_account("shared")
    bed.idp.grant_mailbox_access(delegate, shared)
    user = relay.new_user(account=delegate, mailbox=shared)
    direct = bed.imap_login(shared, bed.token_for(shared))
    try:
        assert direct.append("INBOX", None, None, message("in the shared box"))[0] == "OK"
    finally:
        close_quietly(direct)
    conn = imaplib_conn(relay, bed, "tls")
    try:
        assert conn.login(user.name, user.password)[0] == "OK"
        assert conn.select("INBOX")[1] == [b"1"]
        typ, data = conn.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"in the shared box" in data[0][1]
        assert conn.append("INBOX", None, None, message("written by the delegate"))[0] == "OK"
    finally:
        close_quietly(conn)
    assert len(bed.dovecot.messages(shared)) == 2
    assert not bed.dovecot.messages(delegate)
    assert re.search(r"login_ok .*account=%s .*mailbox=%s" % (re.escape(delegate), re.escape(shared)),
                     relay.journal_text())
