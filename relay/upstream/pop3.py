"""POP3 upstream login: greeting, STLS where needed, CAPA, two-step AUTH XOAUTH2."""

from __future__ import annotations

import re
from typing import List, Tuple

from relay.upstream.connection import UpstreamConnection
from relay.upstream.errors import MailboxInUse, TokenRefused, UpstreamError, UpstreamPermanent

# Answers that say "not now" or "not a token problem" (RFC 2449 [SYS/...], [LOGIN-DELAY]): a
# fresh token would not help, so the relay neither refreshes nor asks for a new sign-in.
_TRANSIENT = re.compile(r"\[SYS/|\[LOGIN-DELAY\]|unavailable|throttl|try again", re.IGNORECASE)


def _ok(conn: UpstreamConnection, what: str) -> str:
    line = conn.read_line()
    if not line.startswith("+OK"):
        raise UpstreamError(f"the POP3 server refused {what}", line)
    return line


def capabilities(conn: UpstreamConnection) -> List[str]:
    conn.send_line(b"CAPA")
    if not conn.read_line().startswith("+OK"):
        return []
    lines: List[str] = []
    for _ in range(200):
        line = conn.read_line()
        if line == ".":
            return lines
        lines.append(line)
    raise UpstreamError("the POP3 server's CAPA list does not end")


def greet(conn: UpstreamConnection, security: str) -> List[str]:
    _ok(conn, "the connection")
    if security == "starttls":
        conn.send_line(b"STLS")
        _ok(conn, "STLS")
        conn.start_tls()
    return capabilities(conn)


def login(conn: UpstreamConnection, security: str, mailbox: str, sasl: bytes) -> Tuple[str, ...]:
    caps = greet(conn, security)
    # Office 365 POP needs the two-step form: AUTH XOAUTH2, wait for "+", then the string.
    conn.send_line(b"AUTH XOAUTH2")
    line = conn.read_line()
    if line.startswith("+") and not line.startswith("+OK"):
        conn.send_line(sasl, secret=True)
        line = conn.read_line()
        if line.startswith("+") and not line.startswith("+OK"):
            conn.send_line(b"")  # an error challenge: an empty answer gets the final -ERR
            line = conn.read_line()
    if line.startswith("+OK"):
        return tuple(caps)
    if "[IN-USE]" in line.upper():
        raise MailboxInUse(f"the mailbox {mailbox} is locked by another POP3 session", line)
    if "[SYS/PERM]" in line.upper():
        raise UpstreamPermanent(f"the POP3 server reports a permanent problem with {mailbox}", line)
    error = UpstreamError if _TRANSIENT.search(line) else TokenRefused
    raise error(f"the POP3 server refused XOAUTH2 for {mailbox}", line)
