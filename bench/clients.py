"""Minimal IMAP / POP3 clients for the benchmarks: raw sockets, TLS, no parsing beyond need.

The same client code talks to Dovecot directly, to the relay and to emailproxy, so whatever
it costs is the same in the three columns. It reads through a BufferedReader (C code for
lines and literals) and counts bytes instead of keeping them.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from typing import Optional, Tuple

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
SCRATCH = 1 << 20


class ProtocolError(Exception):
    pass


def xoauth2(user: str, token: str) -> bytes:
    return base64.b64encode(("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode())


def imap_quote(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


class _Conn:
    def __init__(self, address: Tuple[str, int], context: ssl.SSLContext, server_hostname: str,
                 timeout: float = 60.0, buffer_size: int = SCRATCH):
        raw = socket.create_connection(address, timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        # Bulk readers want a big buffer; the 1,000 held sessions of scenario 6 a small one.
        self.rf = self.sock.makefile("rb", buffering=buffer_size)
        self._scratch: Optional[memoryview] = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.rf.readline()
        if not line:
            raise ProtocolError("connection closed by the server")
        return line

    def skip(self, count: int) -> None:
        """Read and drop exactly `count` bytes."""
        if self._scratch is None:
            self._scratch = memoryview(bytearray(SCRATCH))
        while count:
            got = self.rf.readinto(self._scratch[:min(count, SCRATCH)])
            if not got:
                raise ProtocolError("connection closed inside a literal")
            count -= got

    def tls_info(self) -> str:
        cipher = self.sock.cipher()
        return "%s %s" % (cipher[1], cipher[0]) if cipher else "?"

    def close(self) -> None:
        for closer in (self.rf.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass


class Imap(_Conn):
    def __init__(self, address, context, server_hostname, timeout: float = 60.0, buffer_size: int = SCRATCH):
        super().__init__(address, context, server_hostname, timeout, buffer_size)
        self.greeting = self.line()
        if not self.greeting.startswith(b"* OK"):
            raise ProtocolError("IMAP greeting: %r" % self.greeting[:200])
        self.count = 0

    def _tag(self) -> bytes:
        self.count += 1
        return b"b%d" % self.count

    def command(self, command: bytes) -> Tuple[bytes, int]:
        """Send one command; return (tagged reply, literal bytes read on the way)."""
        tag = self._tag()
        self.send(tag + b" " + command + b"\r\n")
        return self.wait(tag)

    def wait(self, tag: bytes) -> Tuple[bytes, int]:
        prefix = tag + b" "
        literal_bytes = 0
        while True:
            line = self.line()
            if line.startswith(prefix):
                return line, literal_bytes
            if line.startswith(b"+"):
                self.send(b"\r\n")   # an error challenge (XOAUTH2): the empty answer ends it
                continue
            while True:  # a response may hold several literals, each followed by more of the line
                match = _LITERAL.search(line)
                if not match:
                    break
                size = int(match.group(1))
                self.skip(size)
                literal_bytes += size
                line = self.line()

    def ok(self, command: bytes) -> int:
        reply, size = self.command(command)
        if reply.split(b" ", 2)[1:2] != [b"OK"]:
            raise ProtocolError("%s: %r" % (command.split(b" ", 1)[0].decode(), reply[:300]))
        return size

    def login(self, user: str, password: str) -> None:
        self.ok(b"LOGIN " + imap_quote(user) + b" " + imap_quote(password))

    def xoauth2(self, user: str, token: str) -> None:
        self.ok(b"AUTHENTICATE XOAUTH2 " + xoauth2(user, token))

    def logout(self) -> None:
        try:
            self.command(b"LOGOUT")
        finally:
            self.close()


class Pop3(_Conn):
    def __init__(self, address, context, server_hostname, timeout: float = 60.0, buffer_size: int = SCRATCH):
        super().__init__(address, context, server_hostname, timeout, buffer_size)
        self.greeting = self.line()
        if not self.greeting.startswith(b"+OK"):
            raise ProtocolError("POP3 greeting: %r" % self.greeting[:200])

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        reply = self.line()
        if not reply.startswith(b"+"):
            raise ProtocolError("%s: %r" % (line.split(b" ", 1)[0].decode(), reply[:300]))
        return reply

    def login(self, user: str, password: str) -> None:
        self.command(b"USER " + user.encode("utf-8"))
        self.command(b"PASS " + password.encode("utf-8"))

    def xoauth2(self, user: str, token: str) -> None:
        self.command(b"AUTH XOAUTH2")
        self.send(xoauth2(user, token) + b"\r\n")
        reply = self.line()
        if not reply.startswith(b"+OK"):
            raise ProtocolError("AUTH XOAUTH2: %r" % reply[:300])

    def stat(self) -> Tuple[int, int]:
        parts = self.command(b"STAT").split()
        return int(parts[1]), int(parts[2])

    def retr(self, number: int) -> int:
        """RETR one message; returns the bytes of the multi-line answer (status line excluded)."""
        self.send(b"RETR %d\r\n" % number)
        status = self.line()
        if not status.startswith(b"+OK"):
            raise ProtocolError("RETR %d: %r" % (number, status[:300]))
        # One command at a time, so the answer ends where the stream pauses: watch its last
        # five bytes. The status line's CRLF counts for an empty message.
        total, window = 0, b"\r\n"
        while True:
            chunk = self.rf.read1(SCRATCH)
            if not chunk:
                raise ProtocolError("connection closed inside RETR")
            total += len(chunk)
            window = chunk[-5:] if len(chunk) >= 5 else (window + chunk)[-5:]
            if window == b"\r\n.\r\n":
                return total

    def quit(self) -> None:
        try:
            self.command(b"QUIT")
        finally:
            self.close()


def now() -> float:
    return time.perf_counter()


def percentile(values, fraction: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]
