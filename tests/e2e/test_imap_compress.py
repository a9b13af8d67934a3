"""IMAP COMPRESS=DEFLATE (RFC 4978) through the relay's byte pipe, against the bed's Dovecot.

After login the relay neither reads nor rewrites the session, so a client that switches it to
raw deflate both ways must get every byte of its mail back exactly as Dovecot holds it.
"""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
import zlib
from typing import List, Optional

import pytest

from tests.e2e.pop3_support import deliver
from tests.e2e.test_imap import RawImap, assert_logged_in, quoted


class DeflateImap(RawImap):
    """RawImap that, after start_deflate(), sends and reads raw deflate (no zlib header)."""

    deflater = inflater = None
    wire_bytes = plain_bytes = 0      # read since start_deflate(): compressed, and inflated

    def start_deflate(self) -> None:
        # Nothing may follow the tagged OK uncompressed; what follows is compressed.
        assert not self.buffer, self.buffer
        self.deflater = zlib.compressobj(wbits=-15)
        self.inflater = zlib.decompressobj(wbits=-15)

    def send(self, data: bytes) -> None:
        if self.deflater is not None:
            # A sync flush ends each write on a byte boundary, so the server can inflate it at once.
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _fill(self, deadline: float) -> bool:
        if self.inflater is None:
            return super()._fill(deadline)
        plain, self.buffer = self.buffer, b""
        try:
            more = super()._fill(deadline)
        finally:
            compressed, self.buffer = self.buffer, plain
        inflated = self.inflater.decompress(compressed)
        self.wire_bytes += len(compressed)
        self.plain_bytes += len(inflated)
        self.buffer += inflated
        return more

    def literal(self, size: int, timeout: Optional[float] = None) -> bytes:
        """The next `size` bytes (a literal's contents)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buffer) < size:
            if not self._fill(deadline):
                raise AssertionError(f"connection ended inside a {size}-byte literal")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def fetch_body(client: DeflateImap, tag: bytes, number: int) -> bytes:
    """FETCH n BODY.PEEK[]: the literal's bytes, with the untagged and tagged lines checked."""
    client.send(tag + b" FETCH %d (BODY.PEEK[])\r\n" % number)
    line = client.line()
    match = re.fullmatch(rb"\* %d FETCH \(BODY\[\] \{(\d+)\}" % number, line)
    assert match, line
    body = client.literal(int(match.group(1)))
    assert client.line() == b")"
    lines = client.until(tag)
    assert lines == [lines[-1]] and lines[-1].startswith(tag + b" OK"), lines
    return body


def big_text(size: int) -> bytes:
    """Text that compresses well, with incompressible base64 blocks in between (so the deflate
    stream has both stored and compressed blocks, over many TCP segments)."""
    parts: List[bytes] = []
    while sum(map(len, parts)) < size:
        parts.append(b"The quick brown fox jumps over the lazy dog. " * 20 + b"\r\n")
        parts.append(base64.encodebytes(os.urandom(3000)).replace(b"\n", b"\r\n"))
    return b"".join(parts)


@pytest.fixture(scope="module")
def mailbox(relay, bed):
    """A user with two messages delivered through Postfix: a small one and a ~1 MB one."""
    user = relay.new_user()
    small = (f"From: <{user.account}>\r\nTo: <{user.account}>\r\nSubject: compressed small\r\n"
             f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nHello through a deflated pipe.\r\n").encode()
    big = (f"From: <{user.account}>\r\nTo: <{user.account}>\r\nSubject: compressed big\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\n").encode() + big_text(1024 * 1024)
    deliver(bed, user.account, [small])
    deliver(bed, user.account, [big])
    # As Dovecot stores them (LF, Postfix's trace headers on top), in delivery order.
    user.stored = bed.dovecot.messages(user.account)
    assert len(user.stored) == 2 and b"compressed small" in user.stored[0], user.stored[0][:300]
    return user


def capability_atoms(line: bytes) -> List[bytes]:
    match = re.search(rb"\[CAPABILITY ([^\]]*)\]", line)
    return (match.group(1) if match else line[len(b"* CAPABILITY "):]).upper().split()


@pytest.mark.parametrize("mode", ["tls", "plain"])
def test_compress_deflate_through_the_pipe(relay, bed, mailbox, mode):
    with DeflateImap.open(relay, bed, mode) as client:
        lines = client.command(b"a1", b"LOGIN " + quoted(mailbox.name) + b" " + quoted(mailbox.password))
        assert_logged_in(lines, b"a1")
        assert b"COMPRESS=DEFLATE" in capability_atoms(lines[-1]), lines[-1]
        lines = client.command(b"a2", b"CAPABILITY")
        assert lines[-1].startswith(b"a2 OK") and lines[0].startswith(b"* CAPABILITY "), lines
        assert b"COMPRESS=DEFLATE" in capability_atoms(lines[0]), lines[0]

        lines = client.command(b"a3", b"COMPRESS DEFLATE")
        assert len(lines) == 1 and lines[0].startswith(b"a3 OK"), lines
        client.start_deflate()

        lines = client.command(b"a4", b"SELECT INBOX")
        assert b"* 2 EXISTS" in lines and lines[-1].startswith(b"a4 OK"), lines
        for number, stored in enumerate(mailbox.stored, 1):
            fetched = fetch_body(client, b"a%d" % (4 + number), number)
            assert fetched == stored.replace(b"\n", b"\r\n"), \
                f"message {number} came back changed ({len(fetched)} bytes, stored {len(stored)})"
        # A second read of the big one after the first: the stream stays in step.
        assert fetch_body(client, b"a7", 2) == mailbox.stored[1].replace(b"\n", b"\r\n")
        # Deflate really is on the wire: the text half of the big message shrank.
        assert client.wire_bytes < 0.9 * client.plain_bytes, (client.wire_bytes, client.plain_bytes)

        lines = client.command(b"a8", b"LOGOUT")
        assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"a8 OK"), lines
        assert client.closed(), "the relay left the connection open after LOGOUT"
