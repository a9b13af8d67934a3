"""Start, refuse to start, and stop: real processes, real signals."""

from __future__ import annotations

import signal
import socket
import time

from tests.process.helpers import ImapClient, alive, wait_for


def test_start_journals_listeners_and_state_then_serves_all(relay):
    first = relay.journal().splitlines()[:1 + len(relay.ports)]
    assert "relay_starting" in first[0]
    assert f"state_dir={relay.dir / 'state'}" in first[0] and f"runtime_dir={relay.runtime_dir}" in first[0]
    for protocol, port in relay.ports.items():
        assert any(" listening " in line and f"{protocol}@127.0.0.1:{port}" in line for line in first[1:])
        assert relay.answers(protocol)
    assert (relay.runtime_dir / "relay.pid").read_text().strip() == str(relay.proc.pid)
    workers = relay.status()["workers"]
    assert len(workers) == 3 and all(w["generation"] == 1 for w in workers)
    serving = [line for line in relay.journal().splitlines() if " worker_serving " in line]
    assert len(serving) == 3 and all(" generation=1" in line for line in serving)
    assert {int(line.split(" worker=")[1].split()[0]) for line in serving} == {w["pid"] for w in workers}


def test_workers_share_one_listener_socket(relay_factory):
    relay = relay_factory(protocols=("pop3",), extra="")
    relay.write_config(relay.config_text().replace("security: starttls}", "security: starttls, workers: 3}"))
    relay.start()
    assert len(relay.serving_pids("pop3")) == 3
    assert all(relay.answers("pop3") for _ in range(6))


def test_bad_config_exits_78_with_file_line_col(relay_factory):
    relay = relay_factory()
    relay.write_config(relay.config_text().replace("drain_time: 5.0", "drain_time: -1"))
    relay.start(wait=False)
    assert relay.wait_exit(20) == 78
    assert f"{relay.config}:" in relay.output() and "limits.drain_time" in relay.output()


def test_port_in_use_is_reported_at_once(relay_factory):
    relay = relay_factory()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", relay.ports["pop3"]))
        squatter.listen()
        relay.start(wait=False)
        code = relay.wait_exit(20)
    assert code not in (0, 78)
    assert f"127.0.0.1:{relay.ports['pop3']}" in relay.output()
    assert not (relay.runtime_dir / "relay.pid").exists()


def test_term_lets_an_open_session_finish(relay_factory):
    relay = relay_factory(drain_time=8).start()
    with ImapClient(relay.ports["imap"]) as client:
        assert client.greeting.startswith(b"* OK")
        started = time.monotonic()
        relay.signal(signal.SIGTERM)
        wait_for(lambda: relay.greeting("imap", 0.5) is None, 3, what="the listener to close")
        assert relay.proc.poll() is None
        assert client.command("NOOP").startswith(b"t1 OK")
        assert client.command("LOGOUT").startswith(b"t2 OK")
    assert relay.wait_exit(5) == 0
    assert time.monotonic() - started < 8   # done when the session was, not at drain_time
    assert "sessions_cut" not in relay.journal()


def test_term_cuts_sessions_after_drain_time(relay_factory):
    relay = relay_factory(drain_time=1.5).start()
    with ImapClient(relay.ports["imap"]) as client:
        started = time.monotonic()
        relay.signal(signal.SIGTERM)
        assert relay.wait_exit(10) == 0
        elapsed = time.monotonic() - started
        client.sock.settimeout(2)
        rest = b""
        for _ in range(10):                     # up to end of file: the relay closed it
            chunk = client.sock.recv(100)
            if not chunk:
                break
            rest += chunk
        # Not logged in yet: told why, in IMAP's words, before the close.
        assert rest == b"* BYE Server shutting down\r\n"
    assert 1.2 <= elapsed < 6
    assert "sessions_cut" in relay.journal()
    assert not (relay.runtime_dir / "relay.pid").exists()


def test_int_stops_at_once(relay_factory):
    relay = relay_factory(drain_time=30).start()
    pids = relay.serving_pids()
    with ImapClient(relay.ports["imap"]):
        started = time.monotonic()
        relay.signal(signal.SIGINT)
        assert relay.wait_exit(10) == 0
    assert time.monotonic() - started < 3
    wait_for(lambda: not any(alive(pid) for pid in pids), 2, what="the workers to be gone")
