"""The control channel between the master and one worker: a Unix socketpair.

Master to worker: length-prefixed pickles of ("init" | "users", payload). They carry the exact
Config and Users objects the master validated, so a worker never re-reads a file that may have
changed since. Worker to master: short ASCII lines ("ready", "beat"); the master never unpickles
anything a worker sends.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, List, Optional, Tuple

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
MAX_LINE = 1024


def frame(kind: str, payload: Any) -> bytes:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _recv_exactly(sock, size: int) -> Optional[bytes]:
    chunks, missing = [], size
    while missing:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def read_frame(sock) -> Optional[Tuple[str, Any]]:
    """One message from the master, or None when the master closed its end."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"control frame of {size} bytes")
    data = _recv_exactly(sock, size)
    return None if data is None else pickle.loads(data)


class LineBuffer:
    """Splits what a worker sends into lines; garbage longer than MAX_LINE is dropped."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> List[str]:
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > MAX_LINE:
            self._pending = b""
        return [line.decode("ascii", "replace").strip() for line in lines if line.strip()]

BEAT_INTERVAL = 1.0         # a worker says "beat" this often ...
HEARTBEAT_TIMEOUT = 10.0    # ... and is killed as hung after this long without one
BOOT_TIMEOUT = 30.0         # from spawn to "ready": imports, TLS context, first accept
