"""SMTP upstream login: EHLO, STARTTLS, EHLO, AUTH XOAUTH2 (two-step when the line is long)."""

from __future__ import annotations

from typing import List, Tuple

from relay.upstream.connection import UpstreamConnection
from relay.upstream.errors import SmtpAuthDisabled, TokenRefused, UpstreamError

MAX_COMMAND_LINE = 500  # RFC 5321 allows 512 octets with CRLF; tokens are 1.5-3 KB


def reply(conn: UpstreamConnection) -> Tuple[int, List[str]]:
    lines: List[str] = []
    for _ in range(500):
        line = conn.read_line()
        if len(line) < 3 or not line[:3].isdigit():
            raise UpstreamError("the SMTP server sent a malformed reply", line)
        lines.append(line)
        if line[3:4] != "-":
            return int(line[:3]), lines
    raise UpstreamError("the SMTP server's reply does not end")


def _expect(conn: UpstreamConnection, code: int, what: str) -> List[str]:
    status, lines = reply(conn)
    if status != code:
        raise UpstreamError(f"the SMTP server refused {what}", " | ".join(lines))
    return lines


def ehlo(conn: UpstreamConnection, hostname: str) -> List[str]:
    conn.send_line(b"EHLO " + hostname.encode("ascii", "replace"))
    lines = _expect(conn, 250, "EHLO")
    return [line[4:] for line in lines[1:]]


def greet(conn: UpstreamConnection, security: str, hostname: str) -> List[str]:
    """Up to the point where AUTH may be sent; returns the EHLO extensions."""
    _expect(conn, 220, "the connection")
    extensions = ehlo(conn, hostname)
    if security == "starttls":
        conn.send_line(b"STARTTLS")
        _expect(conn, 220, "STARTTLS")
        conn.start_tls()
        extensions = ehlo(conn, hostname)
    return extensions


def login(conn: UpstreamConnection, security: str, account: str, sasl: bytes, hostname: str) -> Tuple[str, ...]:
    extensions = greet(conn, security, hostname)
    if len(b"AUTH XOAUTH2 " + sasl) <= MAX_COMMAND_LINE:
        conn.send_line(b"AUTH XOAUTH2 " + sasl, secret=True)
    else:
        conn.send_line(b"AUTH XOAUTH2")
        status, lines = reply(conn)
        if status != 334:
            raise UpstreamError("the SMTP server refused AUTH XOAUTH2", " | ".join(lines))
        conn.send_line(sasl, secret=True)
    status, lines = reply(conn)
    if status == 334:  # an error challenge: an empty answer gets the final 535
        conn.send_line(b"")
        status, lines = reply(conn)
    answer = " | ".join(lines)
    if status == 235:
        return tuple(extensions)
    if "5.7.139" in answer:
        raise SmtpAuthDisabled(f"Office 365 has SMTP AUTH switched off for {account}", answer)
    if status == 535:
        raise TokenRefused(f"the SMTP server refused XOAUTH2 for {account}", answer)
    raise UpstreamError(f"the SMTP server could not authenticate {account}", answer)
