"""IMAP upstream login: greeting, STARTTLS where needed, AUTHENTICATE XOAUTH2."""

from __future__ import annotations

import re
from typing import List, Tuple

from relay.upstream.connection import UpstreamConnection
from relay.upstream.errors import TokenRefused, UpstreamError

_CAPABILITY_CODE = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
# Office 365's answers that mean "come back later", not "your token is bad".
_TRANSIENT = re.compile(r"throttled|not connected|unavailable|try again|backoff|\[UNAVAILABLE\]|\[SERVERBUG\]",
                        re.IGNORECASE)


def _capabilities(line: str) -> List[str]:
    match = _CAPABILITY_CODE.search(line)
    if match:
        return match.group(1).split()
    if line.upper().startswith("* CAPABILITY "):
        return line.split()[2:]
    return []


def _command(conn: UpstreamConnection, tag: str, command: bytes, secret: bool = False) -> Tuple[str, List[str]]:
    """Send a command, return its tagged reply and the capabilities seen on the way."""
    conn.send_line(tag.encode() + b" " + command, secret=secret)
    caps: List[str] = []
    while True:
        line = conn.read_line()
        caps = _capabilities(line) or caps
        if line.startswith(tag + " "):
            return line, caps
        if line.startswith("* BYE"):
            raise UpstreamError("the IMAP server ended the session", line)
        if line.startswith("+"):
            # Gmail-style error challenge: an empty answer gets the final NO.
            conn.send_line(b"")


def _status(reply: str) -> str:
    parts = reply.split(" ", 2)
    return parts[1].upper() if len(parts) > 1 else ""


def login(conn: UpstreamConnection, security: str, mailbox: str, sasl: bytes) -> Tuple[str, ...]:
    greeting = conn.read_line()
    if not greeting.upper().startswith("* OK"):
        raise UpstreamError("unexpected IMAP greeting", greeting)
    caps = _capabilities(greeting)
    if security == "starttls":
        reply, _ = _command(conn, "R1", b"STARTTLS")
        if _status(reply) != "OK":
            raise UpstreamError("the IMAP server refused STARTTLS", reply)
        conn.start_tls()
        caps = []
    if not caps:
        _, caps = _command(conn, "R2", b"CAPABILITY")
    reply, after = _authenticate(conn, caps, sasl)
    status = _status(reply)
    if status != "OK":
        error = UpstreamError if status == "BAD" or _TRANSIENT.search(reply) else TokenRefused
        raise error(f"the IMAP server refused XOAUTH2 for {mailbox}", reply)
    if not after:
        _, after = _command(conn, "R4", b"CAPABILITY")
    return tuple(after)


def _authenticate(conn: UpstreamConnection, caps: List[str], sasl: bytes) -> Tuple[str, List[str]]:
    upper = {cap.upper() for cap in caps}
    if "AUTH=XOAUTH2" not in upper and "AUTH=OAUTHBEARER" in upper:
        raise UpstreamError("the IMAP server offers OAUTHBEARER but not XOAUTH2", " ".join(caps))
    if "SASL-IR" in upper:
        return _command(conn, "R3", b"AUTHENTICATE XOAUTH2 " + sasl, secret=True)
    conn.send_line(b"R3 AUTHENTICATE XOAUTH2")
    line = conn.read_line()
    if not line.startswith("+"):
        return line, []
    conn.send_line(sasl, secret=True)
    caps_seen: List[str] = []
    while True:
        line = conn.read_line()
        caps_seen = _capabilities(line) or caps_seen
        if line.startswith("R3 "):
            return line, caps_seen
        if line.startswith("+"):
            conn.send_line(b"")
