"""The transport of the raw IMAP, POP3 and SMTP clients of the end-to-end tests.

A client sends exactly the bytes it is given and reads into `buffer` with a deadline; each
protocol's subclass parses its own replies out of that buffer.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Optional, Tuple, Type, TypeVar

_Client = TypeVar("_Client", bound="RawClient")


class RawClient:
    RECV_SIZE = 1024 * 1024
    # Read errors that count as the end of the connection.
    EOF_ERRORS: Tuple[Type[BaseException], ...] = (ConnectionResetError, ssl.SSLError)
    BUFFER: type = bytearray      # the buffer's type: bytes or bytearray
    NODELAY = False               # Nagle off, so that send_split sends one byte per TCP segment

    def __init__(self, port: int, context: Optional[ssl.SSLContext] = None, timeout: float = 20.0,
                 host: str = "127.0.0.1"):
        self.timeout = timeout
        self.buffer = self.BUFFER()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if self.NODELAY:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            self.start_tls(context)

    def start_tls(self, context: ssl.SSLContext) -> None:
        """TLS from here on (the protocol's STARTTLS, if any, is the caller's)."""
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_split(self, data: bytes, pause: float = 0.002) -> None:
        """One byte per send; with NODELAY one per TCP segment, so the relay reads them one at a time."""
        for index in range(len(data)):
            self.sock.sendall(data[index:index + 1])
            time.sleep(pause)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at end of file (or an EOF_ERRORS error)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete reply in time; got so far: {bytes(self.buffer[-300:])!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(self.RECV_SIZE)
        except socket.timeout:
            raise AssertionError(f"no complete reply in time; got so far: {bytes(self.buffer[-300:])!r}") from None
        except self.EOF_ERRORS:
            return False
        if not chunk:
            return False
        self.buffer += chunk
        self._check_size()
        return True

    def _check_size(self) -> None:
        """Fail if the buffer is larger than any reply the tests expect; no bound here."""
