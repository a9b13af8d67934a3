"""Replace a file so that every reader sees the old content or the new, whole."""

from __future__ import annotations

import contextlib
import os


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> os.stat_result:
    """Write `data` to a unique temp file beside `path`, then rename it over `path`.

    `durable` also fsyncs the file and its directory, so a crash right after leaves the new
    content (tokens, keys, certificates); without it a crash may lose the last write, never
    leave half of one (status and activity files). Returns the new file's stat.
    """
    folder, base = os.path.split(path)
    folder = folder or "."
    temp = os.path.join(folder, f".{base}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
            info = os.fstat(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(folder)
    return info
