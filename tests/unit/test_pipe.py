"""relay/pipe.py in-process, on gevent socket pairs (gevent's own socket module: pytest's process
is never monkey-patched). TLS half-close is covered end to end (tests/e2e/test_smtp.py,
test_client_that_half_closes_after_quit_gets_every_reply)."""

import gc
import time

import gevent
import greenlet
import pytest
from gevent import socket

from relay import pipe


class Log:
    def __init__(self):
        self.events = []

    def info(self, event, **fields):
        self.events.append((event, fields))

    debug = warning = info


class Rig:
    """client app <-> [relay client socket | run_pipe | relay upstream socket] <-> upstream app."""

    def __init__(self, idle_timeout=60.0, **kwargs):
        self.client, relay_client = socket.socketpair()
        relay_upstream, self.upstream = socket.socketpair()
        self.log = Log()
        self.started = time.monotonic()
        self.session = gevent.spawn(pipe.run_pipe, relay_client, relay_upstream, idle_timeout, self.log, **kwargs)
        self.relay_sockets = (relay_client, relay_upstream)

    def result(self, timeout=5.0):
        reason = self.session.get(timeout=timeout)
        closed = [event for event in self.log.events if event[0] == "session_closed"]
        assert len(closed) == 1, self.log.events
        return reason, closed[0][1], time.monotonic() - self.started

    def close(self):
        self.session.kill()
        for sock in (self.client, self.upstream) + self.relay_sockets:
            sock.close()


@pytest.fixture
def rig():
    made = []

    def make(**kwargs):
        made.append(Rig(**kwargs))
        return made[-1]
    yield make
    for one in made:
        one.close()


def read_exactly(sock, size, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, data
        data += chunk
    return data


def read_all(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_client_closing_ends_the_pipe_with_counts(rig):
    r = rig(to_upstream=b"pending", to_client=b"leftover")
    r.client.sendall(b"A1 NOOP\r\n")
    assert read_exactly(r.upstream, 16) == b"pendingA1 NOOP\r\n"
    r.upstream.sendall(b"A1 OK done\r\n")
    assert read_exactly(r.client, 20) == b"leftoverA1 OK done\r\n"
    r.client.shutdown(socket.SHUT_WR)
    assert read_all(r.upstream) == b""        # the upstream is told: half-close
    r.upstream.sendall(b"* BYE\r\n")          # and may still answer within the grace
    assert read_exactly(r.client, 7) == b"* BYE\r\n"
    r.upstream.close()
    reason, fields, elapsed = r.result()
    assert reason == "client closed"
    # The hand-over bytes are not counted, as before: only what the pumps forwarded.
    assert (fields["reason"], fields["sent"], fields["received"]) == ("client closed", 9, 19)
    assert elapsed < 2


def test_upstream_closing_ends_the_pipe(rig):
    r = rig()
    r.upstream.sendall(b"* BYE going away\r\n")
    r.upstream.shutdown(socket.SHUT_WR)
    assert read_all(r.client) == b"* BYE going away\r\n"
    r.client.sendall(b"late\r\n")             # the other direction still flows within the grace
    assert read_exactly(r.upstream, 6) == b"late\r\n"
    r.client.close()
    reason, fields, elapsed = r.result()
    assert (reason, fields["sent"], fields["received"]) == ("upstream closed", 6, 18)
    assert elapsed < 2


@pytest.mark.parametrize("ending", ["client", "upstream"])
def test_the_other_direction_gets_close_grace_then_both_close(rig, monkeypatch, ending):
    monkeypatch.setattr(pipe, "CLOSE_GRACE", 0.4)
    r = rig()
    ender, other = (r.client, r.upstream) if ending == "client" else (r.upstream, r.client)
    ender.shutdown(socket.SHUT_WR)            # the other side stays open and silent
    assert read_all(other) == b""             # half-close at once, full close after the grace
    reason, _, elapsed = r.result()
    assert reason == f"{ending} closed"
    assert 0.35 < elapsed < 2, elapsed
    assert read_all(ender) == b""


def test_idle_timeout_when_both_directions_are_idle(rig):
    r = rig(idle_timeout=0.3)
    for _ in range(6):                        # traffic keeps it open past several checks
        gevent.sleep(0.1)
        r.client.sendall(b"x")
        assert r.upstream.recv(10) == b"x"
    assert not r.session.ready()
    reason, fields, elapsed = r.result()
    assert (reason, fields["sent"]) == ("idle timeout", 6)
    assert 0.85 < elapsed < 2.5, elapsed
    assert read_all(r.client) == b"" and read_all(r.upstream) == b""


def test_a_vanished_client_during_a_download_is_client_closed(rig):
    r = rig()
    r.client.close()
    try:
        for _ in range(50):
            r.upstream.sendall(b"y" * 65536)
    except OSError:
        pass
    reason, _, _ = r.result()
    assert reason == "client closed"


def test_both_peers_writing_a_lot_at_once_do_not_deadlock(rig):
    r = rig()
    size = 8 * 1024 * 1024
    got = {}

    def peer(sock, name):
        reader = gevent.spawn(lambda: got.__setitem__(name, len(read_all(sock, 10))))
        sock.sendall(b"z" * size)              # writes everything before reading anything
        sock.shutdown(socket.SHUT_WR)
        reader.join(10)
    gevent.joinall([gevent.spawn(peer, r.client, "client"), gevent.spawn(peer, r.upstream, "upstream")],
                   timeout=20, raise_error=True)
    assert got == {"client": size, "upstream": size}
    reason, fields, _ = r.result()
    assert fields["sent"] == fields["received"] == size


def _live_greenlets():
    return sum(1 for g in gc.get_objects() if isinstance(g, greenlet.greenlet) and g and not g.dead)


def test_one_greenlet_besides_the_session(rig):
    before = _live_greenlets()
    r = rig()
    r.client.sendall(b"a")
    assert r.upstream.recv(10) == b"a"
    assert _live_greenlets() - before == 2    # the session's greenlet and one pump
    r.client.close()
    r.upstream.close()
    r.result()


def test_killing_the_session_ends_the_other_pump_and_closes_both(rig):
    r = rig()
    r.client.sendall(b"a")
    assert r.upstream.recv(10) == b"a"
    r.session.kill(block=True, timeout=2)     # a worker's drain_time over: pool.kill()
    assert read_all(r.client) == b"" and read_all(r.upstream) == b""
    assert all(sock.fileno() == -1 for sock in r.relay_sockets)
