"""relay.upstream.connection.tune_socket on real loopback TCP sockets: what both legs of a
session get (the client's accepted socket in relay/session.py, the upstream one in
UpstreamConnection). tests/e2e/test_socket_tuning.py checks the same on a live session."""

import socket
import ssl
import sys

import pytest

from relay.upstream.connection import BUFFER, UpstreamConnection, tune_socket

# A dead peer (a NAT that forgot the flow, a machine switched off) is found after
# 120 s of silence + 4 unanswered probes 30 s apart.
KEEPIDLE, KEEPINTVL, KEEPCNT = 120, 30, 4

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options")


def kernel_max(name: str) -> int:
    with open(f"/proc/sys/net/core/{name}") as handle:
        return int(handle.read())


def expected_buffer(limit: str) -> int:
    # Linux doubles what setsockopt asks for (bookkeeping overhead) and caps the request
    # at net.core.[rw]mem_max.
    return 2 * min(BUFFER, kernel_max(limit))


@pytest.fixture
def pair():
    """(connecting side, accepted side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        accepted, _ = server.accept()
    yield client, accepted
    client.close()
    accepted.close()


def options(sock: socket.socket) -> dict:
    return {
        "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepidle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "keepintvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "keepcnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    }


TUNED = {"nodelay": 1, "keepalive": 1, "keepidle": KEEPIDLE, "keepintvl": KEEPINTVL, "keepcnt": KEEPCNT}


def assert_tuned(sock: socket.socket) -> None:
    got = options(sock)
    assert {key: got[key] for key in TUNED} == TUNED, got
    assert got["rcvbuf"] == expected_buffer("rmem_max"), got
    assert got["sndbuf"] == expected_buffer("wmem_max"), got


def test_untuned_socket_differs(pair):
    """The kernel's defaults are not what tune_socket sets (else the other tests prove nothing)."""
    got = options(pair[1])
    assert got["keepalive"] == 0 and got["nodelay"] == 0, got
    assert got["rcvbuf"] != expected_buffer("rmem_max") and got["sndbuf"] != expected_buffer("wmem_max"), got


def test_accepted_socket_is_tuned(pair):
    """The client leg: relay/session.py tunes the socket the listener accepted."""
    _, accepted = pair
    tune_socket(accepted)
    assert_tuned(accepted)


def test_connected_socket_is_tuned_and_still_works(pair):
    client, accepted = pair
    tune_socket(client)
    assert_tuned(client)
    client.sendall(b"a1 NOOP\r\n")
    accepted.settimeout(5)
    assert accepted.recv(100) == b"a1 NOOP\r\n"


def test_upstream_connection_tunes_its_socket(pair):
    """The upstream leg: UpstreamConnection tunes the socket before any TLS is layered on it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        upstream = UpstreamConnection("127.0.0.1", server.getsockname()[1], ssl.create_default_context(),
                                      5, log=None)
        accepted, _ = server.accept()
        try:
            assert_tuned(upstream.sock)
        finally:
            accepted.close()
            upstream.close()

