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


class _End(BaseException):
    """Thrown into a pump to stop it (idle timeout, or the grace after the other side ended).
    A BaseException, so that no `except Exception` on the way swallows it."""


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()
        self.lost = ""     # set when a write failed: the side written to is gone
        self.reason = ""   # why the pipe ended, set once by whatever ended it first
        # Bytes each direction forwarded, kept here rather than returned: a pump that is
        # stopped still has its count.
        self.forwarded = {"client>upstream": 0, "upstream>client": 0}


def _log_chunk(log, direction: str, data: bytes) -> None:
    if not journal.wire_enabled():
        return
    text = data[:WIRE_LOG_LIMIT].decode("utf-8", "replace")
    for line in text.splitlines()[:50]:
        journal.wire(log, direction, line)
    if len(data) > WIRE_LOG_LIMIT:
        journal.wire(log, direction, f"... {len(data) - WIRE_LOG_LIMIT} more bytes", redacted=True)


def _pump(source, target, direction: str, activity: _Activity, log, on_end=None) -> None:
    total = since_yield = 0
    try:
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
            activity.forwarded[direction] = total
            # gevent switches only when a socket would block; a stream that never waits (a big
            # RETR on loopback) would starve every other session and the worker's heartbeat.
            # Once per YIELD_EVERY bytes, not per chunk: a TLS read returns one 16 KiB record,
            # and a hub round trip per record cost ~25% more CPU per forwarded byte
            # (bench/README.md, "pipe").
            since_yield += len(data)
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                gevent.sleep(0)
    except _End:
        pass
    finally:   # also after an unexpected error: the other direction must not wait for ever
        _half_close(target)
        if on_end is not None:
            on_end()


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
    """Pipe until either side ends or both are idle for `idle_timeout`. Returns why it ended.

    Two greenlets, not three: client>upstream runs in a greenlet of its own, upstream>client
    in the caller's, and the idle check is a hub timer. Each greenlet blocked in a socket wait
    holds ~10 KiB (its saved stack), and a session is mostly waiting (bench/analysis.md).
    Not both directions in one greenlet: a blocking sendall in each direction can deadlock
    when both peers write a lot at once.
    """
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

    # Invariant: while activity.reason is empty, this greenlet is inside its _pump call (it sets
    # a reason, without blocking, as soon as that call returns). So the timers below may throw
    # into it, and they are closed before it leaves the pump.
    here = gevent.getcurrent()
    loop = gevent.get_hub().loop
    idle = loop.timer(min(60.0, idle_timeout), min(60.0, idle_timeout))
    grace = loop.timer(CLOSE_GRACE)

    def client_ended() -> None:   # in the client>upstream greenlet, its pump done
        if not activity.reason:
            activity.reason = "client closed"
            idle.stop()
            grace.start(here.throw, _End)   # upstream>client may finish within CLOSE_GRACE

    def check_idle() -> None:     # in the hub
        if time.monotonic() - activity.last >= idle_timeout:
            activity.reason = "idle timeout"
            idle.stop()
            up.kill(_End, block=False)
            here.throw(_End)

    up = gevent.spawn(_pump, client, upstream, "client>upstream", activity, log, client_ended)
    try:
        idle.start(check_idle)
        try:
            _pump(upstream, client, "upstream>client", activity, log)
        finally:
            idle.close()
            grace.close()
            # Set even when this greenlet is being killed: client_ended must not arm `grace`.
            activity.reason = activity.reason or "upstream closed"
        up.join(CLOSE_GRACE)   # client>upstream may finish within CLOSE_GRACE
    finally:
        up.kill(_End, block=True, timeout=1)   # nothing when it ended; also if this greenlet is killed
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass
    reason = activity.lost or activity.reason
    log.info("session_closed", reason=reason, sent=activity.forwarded["client>upstream"],
             received=activity.forwarded["upstream>client"])
    return reason
