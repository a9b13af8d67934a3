"""Which TLS session relay/upstream/connection.py offers to the next upstream connection.

Fake servers stand in for OpenSSL: each resumes only the sessions it issued itself. The real
handshakes are in tests/e2e/test_upstream_tls_resumption.py.
"""

import ssl
import time

import pytest

from relay.upstream import connection
from relay.upstream.connection import UpstreamConnection
from relay.upstream.errors import UpstreamError


class Session:
    has_ticket, id, timeout = True, b"id", 7200

    def __init__(self, age=0.0):
        self.time = int(time.time() - age)


class Server:
    def __init__(self):
        self.issued = set()
        self.offered = []


class Tls:
    reads = 0   # of `session`, over all connections

    def __init__(self, session, reused):
        self._session, self.session_reused = session, reused

    @property
    def session(self):
        Tls.reads += 1
        return self._session

    def version(self):
        return "TLSv1.3"

    def recv(self, size):
        return b"* OK ready\r\n"


class Broken(Server):
    pass


class Context:
    """wrap_socket as OpenSSL does it: a session the server knows is resumed, else a full handshake."""

    def __init__(self, age=0.0):
        self.server = None
        self.age = age   # of the sessions the servers issue

    def wrap_socket(self, sock, server_hostname, session=None):
        self.server.offered.append(session)
        if isinstance(self.server, Broken):
            raise ssl.SSLError("handshake failure")
        new = Session(self.age)
        self.server.issued.add(new)
        return Tls(new, session in self.server.issued)


class Log:
    def debug(self, *args, **kwargs):
        pass


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(connection, "_sessions", {})
    monkeypatch.setattr(connection, "_next_read", {})
    monkeypatch.setattr(connection, "READ_INTERVAL", 0.0)   # as on a Python whose session read does not leak
    monkeypatch.setattr(Tls, "reads", 0)


def connect(context, server, host="mail.example", port=993) -> bool:
    """One connection through the relay's code; True when it resumed."""
    conn = UpstreamConnection.__new__(UpstreamConnection)   # no TCP connect
    conn.host, conn.port, conn.context, conn.log = host, port, context, Log()
    conn.buffer, conn._tls_key, conn._offered, conn.sock = b"", None, None, None
    context.server = server
    conn.start_tls()
    conn.read_line()   # the greeting: the session is remembered after it
    return conn.sock.session_reused


def test_one_server_resumes_every_connection_after_the_first():
    context, server = Context(), Server()
    assert [connect(context, server) for _ in range(5)] == [False, True, True, True, True]
    assert Tls.reads == 1   # a resumed connection's session is not read: that costs memory


def test_a_session_past_half_its_lifetime_is_replaced_by_the_next_resumed_ones():
    context, server = Context(age=3601), Server()   # issued sessions are an hour old
    assert [connect(context, server) for _ in range(3)] == [False, True, True]
    assert Tls.reads == 3


def test_two_servers_taking_turns_behind_one_name_resume_every_second_connection():
    context, a, b = Context(), Server(), Server()
    assert [connect(context, server) for server in (a, b) * 4] == [False, False] + [True, False] * 3


def test_a_session_refused_twice_in_a_row_is_replaced():
    context, old, new = Context(), Server(), Server()   # `new`: the same server with new ticket keys
    connect(context, old)
    assert [connect(context, new) for _ in range(4)] == [False, False, True, True]


def test_sessions_are_never_offered_to_another_host_or_port():
    context, server = Context(), Server()
    connect(context, server)
    assert not connect(context, server, host="other.example")
    assert not connect(context, server, port=995)
    assert server.offered == [None, None, None]
    assert connect(context, server)


def test_a_new_context_starts_afresh():   # after a reload; Python refuses another context's session
    context, server = Context(), Server()
    connect(context, server)
    assert not connect(Context(), server)
    assert server.offered[-1] is None


def test_a_failed_handshake_that_offered_a_session_stops_offering_for_a_while():
    context, server = Context(), Server()
    connect(context, server)
    with pytest.raises(UpstreamError):
        connect(context, Broken())
    assert [connect(context, server) for _ in range(3)] == [False, False, False]
    assert server.offered[-3:] == [None, None, None]
    connection._next_read.clear()   # FAILED_PAUSE is over
    assert [connect(context, server) for _ in range(2)] == [False, True]


def test_where_reading_a_session_leaks_it_is_read_once_per_interval(monkeypatch):
    monkeypatch.setattr(connection, "READ_INTERVAL", 1800.0)
    context, old, new = Context(), Server(), Server()
    connect(context, old)
    assert [connect(context, new) for _ in range(4)] == [False, False, False, False]
    assert Tls.reads == 1
    connection._next_read.clear()   # READ_INTERVAL is over
    assert [connect(context, new) for _ in range(2)] == [False, True]
    assert Tls.reads == 2
