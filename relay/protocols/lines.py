"""A bounded reader of CRLF lines (bare LF tolerated) and raw byte blocks.

All three protocols share it. It never holds more than max_line bytes of an
unfinished line: an over-long line is reported once and the rest of it is
thrown away up to its LF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Line:
    """One client line without its line ending.

    For an over-long line `too_long` is True and `data` holds only its first
    max_line bytes (enough to find an IMAP tag; never to be logged).
    """

    data: bytes
    too_long: bool = False


class LineReader:
    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes already known to hold no LF
        self._discarding = False  # inside the tail of an over-long line

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> Optional[Line]:
        """Pop the next complete line, or None until more bytes arrive."""
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                return self._check_unfinished_line()
            raw = bytes(self._buffer[:newline])
            self._consume(newline + 1)
            if self._discarding:
                self._discarding = False  # the over-long line was already reported
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self._max_line:
                return Line(raw[: self._max_line], too_long=True)
            return Line(raw)

    def next_block(self, size: int) -> Optional[bytes]:
        """Pop exactly `size` raw bytes (an IMAP literal), or None until they arrived."""
        if len(self._buffer) < size:
            return None
        block = bytes(self._buffer[:size])
        self._consume(size)
        return block

    def discard(self, up_to: int) -> int:
        """Throw away at most `up_to` buffered bytes; return how many went."""
        count = min(up_to, len(self._buffer))
        self._consume(count)
        return count

    def take_buffered(self) -> bytes:
        """Hand over every buffered byte (pipelined data for the upstream)."""
        data = bytes(self._buffer)
        self.clear()
        return data

    def clear(self) -> None:
        """Forget everything buffered (plaintext sent before a TLS handshake)."""
        self._buffer.clear()
        self._scanned = 0
        self._discarding = False

    def _check_unfinished_line(self) -> Optional[Line]:
        if self._discarding:
            self._consume(len(self._buffer))
            return None
        # One byte of slack: a line of exactly max_line may still end in CR.
        if len(self._buffer) > self._max_line + 1:
            head = bytes(self._buffer[: self._max_line])
            self._consume(len(self._buffer))
            self._discarding = True
            return Line(head, too_long=True)
        self._scanned = len(self._buffer)
        return None

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._scanned = 0
