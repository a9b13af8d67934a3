"""After login: a byte-for-byte pipe between client and upstream.

No parsing and no re-encoding, so IDLE, literals, BDAT, COMPRESS=DEFLATE all pass untouched.
When one side reaches end of file its bytes are all forwarded, the other side is told with a
half-close, and after a short grace both sockets are closed: nothing is left half-open.
"""

from __future__ import annotations

import socket
import time

import gevent

from relay import journal

CHUNK = 256 * 1024
CLOSE_GRACE = 10.0      # seconds the other direction may finish after one side ended
WIRE_LOG_LIMIT = 4096   # bytes of each chunk shown at full-debug


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()


def _log_chunk(log, direction: str, data: bytes) -> None:
    if not journal.wire_enabled():
        return
    text = data[:WIRE_LOG_LIMIT].decode("utf-8", "replace")
    for line in text.splitlines()[:50]:
        journal.wire(log, direction, line)
    if len(data) > WIRE_LOG_LIMIT:
        journal.wire(log, direction, f"... {len(data) - WIRE_LOG_LIMIT} more bytes", redacted=True)


def _pump(source, target, direction: str, activity: _Activity, log) -> int:
    total = 0
    while True:
        try:
            data = source.recv(CHUNK)
        except (OSError, ValueError):
            data = b""
        if not data:
            break
        activity.last = time.monotonic()
        _log_chunk(log, direction, data)
        try:
            target.sendall(data)
        except (OSError, ValueError):
            break
        total += len(data)
    try:
        target.shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass
    return total


def run_pipe(client, upstream, idle_timeout: float, log, to_upstream: bytes = b"", to_client: bytes = b"") -> str:
    """Pipe until either side ends or both are idle for `idle_timeout`. Returns why it ended."""
    for sock in (client, upstream):
        sock.settimeout(None)
    activity = _Activity()
    try:
        if to_upstream:
            upstream.sendall(to_upstream)
        if to_client:
            client.sendall(to_client)
    except OSError:
        return "peer closed during hand-over"
    up = gevent.spawn(_pump, client, upstream, "client>upstream", activity, log)
    down = gevent.spawn(_pump, upstream, client, "upstream>client", activity, log)
    reason = _wait(up, down, activity, idle_timeout)
    gevent.joinall([up, down], timeout=CLOSE_GRACE)
    gevent.killall([up, down], block=True, timeout=1)
    for sock in (client, upstream):
        try:
            sock.close()
        except OSError:
            pass
    log.info("session_closed", reason=reason, sent=up.value or 0, received=down.value or 0)
    return reason


def _wait(up, down, activity: _Activity, idle_timeout: float) -> str:
    while True:
        done = gevent.wait([up, down], timeout=min(60.0, idle_timeout), count=1)
        if done:
            return "client closed" if done[0] is up else "upstream closed"
        if time.monotonic() - activity.last >= idle_timeout:
            return "idle timeout"
