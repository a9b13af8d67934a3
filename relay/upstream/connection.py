"""A TCP+TLS connection to an upstream mail server with a small line reader.

Plain `socket`/`ssl` calls: in a worker they are gevent's (monkey-patched), in tests the
standard library's. The certificate is always verified; `ca_file` adds a trust anchor.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from typing import Dict, Optional, Tuple

from relay import journal
from relay.upstream.errors import UpstreamError

MAX_REPLY_LINE = 64 * 1024
BUFFER = 256 * 1024

# TLS session resumption: a recent session of each (host, port, server name) in this process,
# offered to the next connections there, which then skip the certificate exchange and its
# verification (the session's certificate was verified when it was made). A refused session
# costs nothing: OpenSSL falls back to a full handshake by itself.
class _Cached:
    __slots__ = ("context", "session", "refused")

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession):
        self.context = context   # a session resumes only in the context that made it
        self.session = session
        self.refused = 0         # times in a row a server refused it


_sessions: Dict[Tuple[str, int, str], _Cached] = {}
_next_read: Dict[Tuple[str, int, str], float] = {}   # time.monotonic() before which no session is taken
# A refused session is kept this many times in a row before a newer one replaces it: servers
# behind one name may each have ticket keys of their own, and a connection to the other one
# must not throw away the session of this one. The bed's two imap-login processes take turns:
# replacing on every refusal resumed no IMAP login there, keeping it once resumed every second.
# (A server that takes each ticket only once would resume every third connection.)
KEEP_REFUSED = 1
# Reading SSLSocket.session leaks a copy of the session (~5 KiB, measured) from CPython 3.10 on,
# fixed in 3.12.8 and 3.13.1 at the latest (python/cpython#116810). There, read at most once per
# key in this interval: a kept session resumes until it is refused twice in a row or is half way
# through its lifetime, and then waits up to this long to be replaced; ~0.25 MiB a day at most.
_LEAKY = (3, 10) <= sys.version_info[:3] < (3, 12, 8) or (3, 13) <= sys.version_info[:3] < (3, 13, 1)
READ_INTERVAL = 1800.0 if _LEAKY else 0.0
FAILED_PAUSE = 600.0   # no session offered for this long after a handshake that offered one failed


def client_tls_context(ca_file: Optional[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tune_socket(sock: socket.socket) -> None:
    """Large buffers, no Nagle delay (else ~40 ms per reply waits for a delayed ACK), keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 120), ("TCP_KEEPINTVL", 30), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)


class UpstreamConnection:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float, log):
        self.host, self.port, self.context, self.log = host, port, context, log
        self.buffer = b""
        self._tls_key: Optional[Tuple[str, int, str]] = None   # set until the session is remembered
        self._offered: Optional[ssl.SSLSession] = None
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}", exc.strerror or str(exc))
        tune_socket(self.sock)

    def start_tls(self) -> None:
        if self.buffer:
            raise UpstreamError("upstream sent data before the TLS handshake", repr(self.buffer[:80]))
        key = (self.host, self.port, self.host)   # (host, port, server_hostname)
        cached = _sessions.get(key)
        self._offered = cached.session if cached is not None and cached.context is self.context else None
        try:
            self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host, session=self._offered)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            if self._offered is not None:   # whatever the cause: a server that fails resumptions
                _sessions.pop(key, None)    # must not fail every other login
                _next_read[key] = time.monotonic() + max(FAILED_PAUSE, READ_INTERVAL)
            raise UpstreamError(f"TLS with {self.host}:{self.port} failed", str(exc))
        self._tls_key = key
        self.log.debug("upstream_tls", host=self.host, port=self.port, tls_version=self.sock.version(),
                       tls_resumed="true" if self.sock.session_reused else "false")

    def _remember_session(self) -> None:
        """Called after the first read past the handshake: TLS 1.3 tickets arrive after it, so
        before that read `sock.session` cannot be resumed. Reads `sock.session` only when the
        cache needs a new session (see READ_INTERVAL); a resumed connection's session is the
        cached one."""
        key, self._tls_key = self._tls_key, None
        cached = _sessions.get(key)
        if cached is not None and cached.context is self.context and self._offered is cached.session:
            if self.sock.session_reused:
                cached.refused = 0
                if time.time() - cached.session.time < cached.session.timeout / 2:
                    return   # still fresh; past half its lifetime this connection's replaces it
            else:
                cached.refused += 1
                if cached.refused <= KEEP_REFUSED:
                    return
        now = time.monotonic()
        if now < _next_read.get(key, now):
            return
        _next_read[key] = now + READ_INTERVAL
        session = self.sock.session
        if session is not None and (session.has_ticket or session.id):
            _sessions[key] = _Cached(self.context, session)

    def send_line(self, line: bytes, secret: bool = False) -> None:
        journal.wire(self.log, "relay>upstream", "<redacted>" if secret else line.decode("utf-8", "replace"),
                     redacted=secret)
        try:
            self.sock.sendall(line + b"\r\n")
        except OSError as exc:
            raise UpstreamError(f"connection to {self.host}:{self.port} lost", str(exc))

    def read_line(self) -> str:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REPLY_LINE:
                raise UpstreamError("upstream sent an over-long line", repr(self.buffer[:80]))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise UpstreamError(f"{self.host}:{self.port} did not answer in time")
            except OSError as exc:
                raise UpstreamError(f"connection to {self.host}:{self.port} lost", str(exc))
            if not chunk:
                raise UpstreamError(f"{self.host}:{self.port} closed the connection",
                                    self.buffer.decode("utf-8", "replace"))
            self.buffer += chunk
            if self._tls_key is not None:
                self._remember_session()
        line, _, self.buffer = self.buffer.partition(b"\n")
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        journal.wire(self.log, "upstream>relay", text)
        return text

    def detach(self):
        """Hand the socket and any bytes already read over to the pipe."""
        self.sock.settimeout(None)
        leftover, self.buffer = self.buffer, b""
        return self.sock, leftover

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
