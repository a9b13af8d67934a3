"""Helpers of the POP3 end-to-end tests: a raw POP3 client, mail delivery, fetchmail runs."""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import List, Optional

from tests.e2e.raw_client import RawClient

READ_LIMIT = 64 * 1024 * 1024   # no reply of these tests is bigger
# getmail6 is a test extra: beside this Python (a venv's bin is not always on PATH), or on PATH.
_BESIDE = Path(sys.executable).with_name("getmail")
GETMAIL = str(_BESIDE) if _BESIDE.exists() else shutil.which("getmail")


class RawPop3(RawClient):
    """A POP3 client that sends exactly the bytes it is given and reads replies with a deadline."""

    NODELAY = True   # send_split: one byte per TCP segment (with Nagle, the bytes coalesce)

    def _check_size(self) -> None:
        if len(self.buffer) > READ_LIMIT:
            raise AssertionError("reply larger than any this test expects")

    def line(self, timeout: Optional[float] = None) -> bytes:
        """One reply line without CRLF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise EOFError(f"connection closed; unfinished line {self.buffer!r}")
        end = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def multiline(self, timeout: Optional[float] = None) -> bytes:
        """The body of a multi-line reply after its status line: raw, CRLF, still dot-stuffed,
        without the terminating '.' line."""
        deadline = time.monotonic() + (timeout or self.timeout)
        # The terminator is CRLF.CRLF, or a lone ".CRLF" when the body is empty.
        scanned = 0
        while True:
            if self.buffer.startswith(b".\r\n"):
                del self.buffer[:3]
                return b""
            end = self.buffer.find(b"\r\n.\r\n", scanned)
            if end >= 0:
                body = bytes(self.buffer[:end + 2])
                del self.buffer[:end + 5]
                return body
            scanned = max(0, len(self.buffer) - 4)
            if not self._fill(deadline):
                raise EOFError("connection closed inside a multi-line reply")

    def command(self, text: str) -> bytes:
        self.send(text.encode("utf-8") + b"\r\n")
        return self.line()

    def closed(self, timeout: float = 10.0) -> bool:
        """True when the server has closed the connection (everything before is read away)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except AssertionError:
            return False
        return True

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command("STLS").startswith(b"+OK")
        assert not self.buffer
        self.start_tls(context)


def new_user(relay, **options):
    """relay.new_user, with the identity provider asking the device-code sign-in to poll every
    second (not Microsoft's 5 s), so a sign-in takes about a second."""
    relay.bed.idp.set_device_flow(interval=1)
    return relay.new_user(**options)


def dovecot_mailbox(bed, account: str) -> List[bytes]:
    """Every message as Dovecot's own POP3 sends it for RETR (CRLF, dot-stuffed), in order."""
    with RawPop3(bed.pop3s_port, bed.ssl_context(), timeout=60, host=bed.upstream_host) as raw:
        assert raw.line().startswith(b"+OK")
        assert raw.command("AUTH XOAUTH2").startswith(b"+")
        token = bed.token_for(account)
        answer = raw.command(base64.b64encode(f"user={account}\1auth=Bearer {token}\1\1".encode()).decode())
        assert answer.startswith(b"+OK"), answer
        count = int(raw.command("STAT").split()[1])
        bodies = []
        for number in range(1, count + 1):
            assert raw.command(f"RETR {number}").startswith(b"+OK")
            bodies.append(raw.multiline())
        raw.command("QUIT")
    return bodies


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode("utf-8")).decode("ascii")


def unstuff(body: bytes) -> bytes:
    """A RETR body (CRLF, dot-stuffed) as Dovecot stores it (LF)."""
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines[:-1])


def message(subject: str, body: str, sender: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@pop3-tests>"
    msg.set_content(body)
    return msg


def deliver(bed, account: str, messages: List, total: Optional[int] = None) -> List[bytes]:
    """Send messages (EmailMessage or raw bytes) to account through the bed's Postfix;
    return the mailbox as Dovecot stores it once all arrived."""
    before = len(bed.dovecot.messages(account))
    conn = bed.smtp_login(account, bed.token_for(account), timeout=60)
    try:
        for msg in messages:
            if isinstance(msg, EmailMessage):
                conn.send_message(msg, from_addr=account, to_addrs=[account])
            else:
                conn.sendmail(account, [account], msg)
    finally:
        conn.quit()
    return bed.wait_for_delivery(account, total if total is not None else before + len(messages), timeout=60)


def fetchmail(directory: Path, port: int, user: str, password: str, mode: str, ca_file: str,
              keep: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run fetchmail once: only the relay's address, a local user and its password.

    mode: "tls" (implicit TLS, 995-style), "stls" (STLS required, 110-style) or "plain"
    (110-style without TLS). Each message goes to its own file under directory/inbox. The
    server is named localhost: fetchmail checks the certificate's names, not its addresses.
    """
    mda = _mda(directory)
    security = {
        "tls": f'ssl sslproto "TLS1.2+" sslcertck sslcertfile "{ca_file}"',
        "stls": f'sslproto "TLS1.2+" sslcertck sslcertfile "{ca_file}"',
        "plain": 'sslproto "" no sslcertck',
    }[mode]
    rc = directory / "fetchmailrc"
    rc.write_text(
        f'set no syslog\n'
        f'poll localhost service {port} protocol pop3 timeout 30\n'
        f'    user "{_rc_escape(user)}" password "{_rc_escape(password)}" is root here\n'
        f'    {security}\n'
        f'    {"keep" if keep else "nokeep"} fetchall mda "{mda}"\n')
    rc.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(FETCHMAILHOME=str(directory), LC_ALL="C.UTF-8", HOME=str(directory))
    return subprocess.run(["fetchmail", "--nodetach", "--nosyslog", "-v", "-f", str(rc),
                           "--pidfile", str(directory / "fetchmail.pid"),
                           "--idfile", str(directory / "fetchids")],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _mda(directory: Path) -> Path:
    """A delivery program that writes each message to its own file under directory/inbox."""
    inbox = directory / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    mda = directory / "mda.sh"
    mda.write_text(f'#!/bin/sh\nexec cat > "$(mktemp {inbox}/msg.XXXXXXXX)"\n')
    mda.chmod(0o755)
    return mda


def getmail(directory: Path, port: int, user: str, password: str, tls: bool, ca_file: str,
            delete: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run getmail6 once (an .ini file: the password is taken verbatim); see fetched()."""
    retriever = (f"type = SimplePOP3SSLRetriever\nca_certs = {ca_file}\n" if tls
                 else "type = SimplePOP3Retriever\n")
    rc = directory / "getmailrc"
    rc.write_text(f"[retriever]\n{retriever}server = localhost\nport = {port}\n"
                  f"username = {user}\npassword = {password}\n"
                  f"[destination]\ntype = MDA_external\npath = {_mda(directory)}\n"
                  f"allow_root_commands = true\n"
                  f"[options]\nread_all = true\ndelete = {str(delete).lower()}\nverbose = 2\n"
                  f"delivered_to = false\nreceived = false\nmessage_log_syslog = false\n",
                  encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(LC_ALL="C.UTF-8", HOME=str(directory))
    return subprocess.run([GETMAIL, f"--getmaildir={directory}", f"--rcfile={rc}"],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _rc_escape(text: str) -> str:
    """A fetchmailrc quoted string has no \\" escape; \\xhh works for any ASCII delimiter."""
    return "".join(f"\\x{ord(c):02x}" if c in '"\\' else c for c in text)


def fetched(directory: Path) -> List[bytes]:
    inbox = directory / "inbox"
    return [path.read_bytes() for path in sorted(inbox.iterdir())] if inbox.exists() else []
