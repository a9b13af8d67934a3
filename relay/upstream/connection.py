"""A TCP+TLS connection to an upstream mail server with a small line reader.

Plain `socket`/`ssl` calls: in a worker they are gevent's (monkey-patched), in tests the
standard library's. The certificate is always verified; `ca_file` adds a trust anchor.
"""

from __future__ import annotations

import socket
import ssl
from typing import Optional

from relay import journal
from relay.upstream.errors import UpstreamError

MAX_REPLY_LINE = 64 * 1024
BUFFER = 256 * 1024


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
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}", exc.strerror or str(exc))
        tune_socket(self.sock)

    def start_tls(self) -> None:
        if self.buffer:
            raise UpstreamError("upstream sent data before the TLS handshake", repr(self.buffer[:80]))
        try:
            self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            raise UpstreamError(f"TLS with {self.host}:{self.port} failed", str(exc))

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
