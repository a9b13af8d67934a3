"""After login: a byte-for-byte pipe between client and upstream.

No parsing and no re-encoding, so IDLE, literals, BDAT, COMPRESS=DEFLATE all pass untouched.
When one side reaches end of file its bytes are all forwarded, the other side is told with a
half-close, and after a short grace both sockets are closed: nothing is left half-open.
"""

from __future__ import annotations

import socket
import ssl
import time

import gevent

from relay import journal

CHUNK = 256 * 1024
YIELD_EVERY = 256 * 1024   # bytes a pump forwards without blocking before it lets others run
CLOSE_GRACE = 10.0      # seconds the other direction may finish after one side ended
WIRE_LOG_LIMIT = 4096   # bytes of each chunk shown at full-debug
WIRE_LOG_BUDGET = 256 * 1024   # of each direction's bytes, how many have chunks shown (a 25 MB RETR
                               # in full would journal ~100,000 lines and crawl at ~3 MB/s)


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()
        self.lost = ""   # set when a write failed: the side written to is gone


def _log_chunk(log, direction: str, data: bytes) -> None:
    if not journal.wire_enabled():
        return
    text = data[:WIRE_LOG_LIMIT].decode("utf-8", "replace")
    for line in text.splitlines()[:50]:
        journal.wire(log, direction, line)
    if len(data) > WIRE_LOG_LIMIT:
        journal.wire(log, direction, f"... {len(data) - WIRE_LOG_LIMIT} more bytes", redacted=True)


def _pump(source, target, direction: str, activity: _Activity, log) -> int:
    total = since_yield = 0
    while True:
        try:
            data = source.recv(CHUNK)
        except (OSError, ValueError):
            data = b""
        if not data:
            break
        activity.last = time.monotonic()
        if total < WIRE_LOG_BUDGET:
            _log_chunk(log, direction, data)
            if total + len(data) >= WIRE_LOG_BUDGET:
                journal.wire(log, direction, "... the rest of this direction is not shown", redacted=True)
        try:
            target.sendall(data)
        except (OSError, ValueError):
            activity.lost = "upstream closed" if direction == "client>upstream" else "client closed"
            break
        total += len(data)
        # gevent switches only when a socket would block; a stream that never waits (a big RETR
        # on loopback) would starve every other session and the worker's heartbeat. Once per
        # YIELD_EVERY bytes, not per chunk: a TLS read returns one 16 KiB record, and a hub round
        # trip per record cost ~25% more CPU per forwarded byte (bench/README.md, "pipe").
        since_yield += len(data)
        if since_yield >= YIELD_EVERY:
            since_yield = 0
            gevent.sleep(0)
    _half_close(target)
    return total


def _half_close(sock) -> None:
    """Tell the peer no more bytes come. Not SSLSocket.shutdown(): that also drops the TLS
    layer, and the other direction's pump would then read raw TLS records and forward them
    (ciphertext to the client). TLS has no half-close: shut down the TCP socket beneath it."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            socket.socket.shutdown(sock, socket.SHUT_WR)
        else:
            sock.shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass


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
        for sock in (client, upstream):   # the session no longer owns the upstream socket
            try:
                sock.close()
            except OSError:
                pass
        log.info("session_closed", reason="peer closed during hand-over", sent=0, received=0)
        return "peer closed during hand-over"
    up = gevent.spawn(_pump, client, upstream, "client>upstream", activity, log)
    down = gevent.spawn(_pump, upstream, client, "upstream>client", activity, log)
    reason = _wait(up, down, activity, idle_timeout)
    reason = activity.lost or reason
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
