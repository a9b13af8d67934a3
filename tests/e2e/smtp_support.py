"""Helpers of the SMTP end-to-end tests: messages, what Postfix adds, a raw SMTP client, CLI clients."""

from __future__ import annotations

import base64
import email.utils
import os
import re
import smtplib
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tests.e2e.raw_client import RawClient

MODES = ("plain", "starttls", "tls")   # port 25 without TLS, port 25 with STARTTLS, port 465
SETTLE = 0.25                          # seconds to wait for a duplicate that must not come
READ_LIMIT = 1024 * 1024               # no reply of these tests is bigger

# What Postfix and its delivery agent put above the message as sent: the pipe(8) D and R
# flags add Return-Path and Delivered-To, smtpd its Received header (three lines). Nothing
# else, since every test message has From, To, Date and Message-ID of its own.
_TRACE = re.compile(
    rb"Return-Path: <(?P<sender>[^>\n]*)>\n"
    rb"Delivered-To: (?P<rcpt>[^\n]*)\n"
    rb"(?P<received>Received: from [^\n]*\n(?:\t[^\n]*\n)+)")


def port_of(relay, mode: str) -> int:
    return relay.ports["smtp-tls" if mode == "tls" else "smtp-starttls"]


def message(sender: str, rcpt: str, body: bytes, subject: bytes = b"", headers: Sequence[bytes] = ()) -> bytes:
    """A complete message with CRLF line ends; `body` is given with CRLF too."""
    lines = [b"From: <" + sender.encode() + b">",
             b"To: <" + rcpt.encode("utf-8") + b">",
             b"Subject: " + (subject or b"test " + uuid.uuid4().hex.encode()),
             b"Date: " + email.utils.formatdate(localtime=False).encode(),
             b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@example.test>"]
    lines += list(headers)
    assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b"")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


DOT_BODY = (b"Lines that start with a dot:\r\n"
            b".\r\n"
            b"..\r\n"
            b".leading dot\r\n"
            b"..two leading dots\r\n"
            b". space after the dot\r\n"
            b"\r\n"
            b".\r\n")


def assert_delivered_as_sent(stored: bytes, sent: bytes, sender: str, rcpt: str) -> None:
    """The stored message is exactly what was sent (LF line ends), below Postfix's trace headers."""
    match = _TRACE.match(stored)
    assert match, f"unexpected trace headers: {stored[:600]!r}"
    assert match.group("sender") == sender.encode()
    assert match.group("rcpt").lower() == rcpt.encode("utf-8").lower()
    # ESMTPSA, or UTF8SMTPSA with SMTPUTF8: authenticated, over TLS (the relay's upstream leg).
    assert re.search(rb" with (UTF8SMTPSA|ESMTPSA) id ", match.group("received")), match.group("received")
    rest = stored[match.end():]
    expected = sent.replace(b"\r\n", b"\n")
    if rest != expected:
        at = next((i for i, (a, b) in enumerate(zip(rest, expected)) if a != b), min(len(rest), len(expected)))
        raise AssertionError(f"stored message differs at byte {at} (stored {len(rest)}, sent {len(expected)}): "
                             f"stored {rest[max(0, at - 80):at + 80]!r} / sent {expected[max(0, at - 80):at + 80]!r}")


def delivered_once(bed, mailbox: str, count: int = 1, timeout: float = 20.0) -> List[bytes]:
    """Wait for `count` messages, then check that no further copy turns up."""
    messages = bed.wait_for_delivery(mailbox, count, timeout)
    time.sleep(SETTLE)
    messages = bed.dovecot.messages(mailbox)
    assert len(messages) == count, f"{mailbox} holds {len(messages)} messages, expected exactly {count}"
    return messages


def assert_nothing_delivered(bed, mailbox: str) -> None:
    time.sleep(SETTLE)
    assert bed.dovecot.messages(mailbox) == []


# ---------------------------------------------------------------------------------------- smtplib

def smtplib_client(relay, bed, mode: str, timeout: float = 30.0) -> smtplib.SMTP:
    """An smtplib client on the relay, greeted, TLS up as the mode says."""
    port = port_of(relay, mode)
    if mode == "tls":
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, timeout=timeout, context=bed.ssl_context())
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=timeout)
    try:
        client.ehlo("legacy.example.test")
        if mode == "starttls":
            client.starttls(context=bed.ssl_context())
            client.ehlo("legacy.example.test")
    except BaseException:
        client.close()
        raise
    return client


def smtplib_login(client: smtplib.SMTP, user, mechanism: str = "PLAIN", initial: bool = True) -> Tuple[int, bytes]:
    client.user, client.password = user.name, user.password
    method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    return client.auth(mechanism, method, initial_response_ok=initial)


# ---------------------------------------------------------------------------------------- raw client

class RawSmtp(RawClient):
    """An SMTP client that sends exactly the bytes it is given and reads replies with a deadline."""

    RECV_SIZE = 65536
    EOF_ERRORS = (ConnectionError, ssl.SSLError)   # a connection reset, too, is the end

    def _check_size(self) -> None:
        assert len(self.buffer) < READ_LIMIT

    def reply(self) -> Tuple[int, str]:
        """One complete reply: its code and its lines joined by newlines. (0, "") at end of file."""
        deadline = time.monotonic() + self.timeout
        lines: List[str] = []
        for _ in range(1000):
            newline = self.buffer.find(b"\n")
            if newline < 0:
                if not self._fill(deadline):
                    assert not self.buffer and not lines, f"connection ended inside a reply: {lines} {self.buffer!r}"
                    return 0, ""
                continue
            line = bytes(self.buffer[:newline + 1])
            del self.buffer[:newline + 1]
            assert line.endswith(b"\r\n") and re.match(rb"[2-5]\d\d[ -]", line), f"not an SMTP reply line: {line!r}"
            lines.append(line[:-2].decode("utf-8"))
            if line[3:4] == b" ":
                return int(line[:3]), "\n".join(lines)
        raise AssertionError("reply does not end")

    def command(self, line: bytes) -> Tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply()

    def rest(self) -> bytes:
        """Everything until the server closes (bounded by the timeout)."""
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            pass
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


def plain_response(user) -> bytes:
    return base64.b64encode(b"\0" + user.name.encode("utf-8") + b"\0" + user.password.encode("utf-8"))


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------- CLI clients

def client_env() -> dict:
    """The tools' environment: no proxy may send loopback traffic elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def run_tool(argv: Sequence[str], stdin: Optional[bytes] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, env=client_env())


def swaks(relay, bed, mode: str, user, mechanism: str, sender: str, rcpt: str, data_file: Path
          ) -> subprocess.CompletedProcess:
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(port_of(relay, mode)),
            "--helo", "legacy.example.test", "--from", sender, "--to", rcpt,
            "--auth", mechanism, "--auth-user", user.name, "--auth-password", user.password,
            "--data", "@" + str(data_file), "--timeout", "60"]
    if mode == "starttls":
        argv += ["--tls"]
    elif mode == "tls":
        argv += ["--tls-on-connect"]
    if mode != "plain":
        argv += ["--tls-verify", "--tls-ca-path", bed.ca_file]
    return run_tool(argv)


def curl(relay, bed, mode: str, user, mechanism: str, sender: str, rcpt: str, data_file: Path,
         sasl_ir: bool) -> subprocess.CompletedProcess:
    scheme = "smtps" if mode == "tls" else "smtp"
    argv = ["curl", "-sS", "--max-time", "60", "--url", f"{scheme}://127.0.0.1:{port_of(relay, mode)}/legacy.example.test",
            "--cacert", bed.ca_file, "--user", f"{user.name}:{user.password}",
            "--login-options", f"AUTH={mechanism}", "--mail-from", sender, "--mail-rcpt", rcpt,
            "--upload-file", str(data_file)]
    if mode == "starttls":
        argv += ["--ssl-reqd"]
    if sasl_ir:
        argv += ["--sasl-ir"]
    return run_tool(argv)


def msmtp(relay, bed, mode: str, user, mechanism: str, sender: str, rcpt: str, data: bytes, workdir: Path
          ) -> subprocess.CompletedProcess:
    password_file = workdir / f"msmtp-password-{uuid.uuid4().hex[:8]}"
    password_file.write_text(user.password + "\n", encoding="utf-8")
    config = workdir / f"msmtprc-{uuid.uuid4().hex[:8]}"
    config.write_text("\n".join([
        "defaults",
        "logfile -",
        "account relay",
        "host 127.0.0.1",
        f"port {port_of(relay, mode)}",
        "domain legacy.example.test",
        f"tls {'off' if mode == 'plain' else 'on'}",
        f"tls_starttls {'on' if mode == 'starttls' else 'off'}",
        f"tls_trust_file {bed.ca_file}",
        f"auth {mechanism.lower()}",
        f"user {user.name}",
        f"passwordeval \"cat {password_file}\"",
        f"from {sender}",
        "account default : relay",
        ""]), encoding="utf-8")
    config.chmod(0o600)
    return run_tool(["msmtp", "-C", str(config), "-f", sender, "--", rcpt], stdin=data)
