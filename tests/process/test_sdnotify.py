"""systemd readiness over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import signal
import socket
import time
import uuid

from tests.process.helpers import wait_for

from relay.master import sdnotify


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def receive(self):
        try:
            self.messages.append(self.sock.recv(4096).decode())
        except socket.timeout:
            pass
        return self.messages

    def wait(self, field: str, timeout: float = 20.0, after: int = 0) -> str:
        def found():
            return next((m for m in self.receive()[after:] if field in m.split("\n")), None)
        return wait_for(found, timeout, interval=0, what=f"{field} on NOTIFY_SOCKET")

    def close(self):
        self.sock.close()


def test_notify_reaches_an_abstract_socket():
    name = f"oauth-relay-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("READY=1", "STATUS=x", environ={"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"READY=1\nSTATUS=x"


def test_notify_without_a_socket_is_a_no_op(tmp_path):
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False


def test_ready_reloading_status_and_stopping(relay_factory):
    relay = relay_factory()
    notify = NotifySocket(relay.dir / "notify")
    try:
        relay.start(env={"NOTIFY_SOCKET": notify.path}, wait=False)
        ready = notify.wait("READY=1")
        assert "STATUS=generation 1: 3 workers serving" in ready
        assert all(relay.answers(protocol) for protocol in relay.ports)   # READY only once all serve
        for pid in relay.serving_pids():     # only the master speaks to systemd
            with open(f"/proc/{pid}/environ", "rb") as handle:
                assert b"NOTIFY_SOCKET=" not in handle.read()

        seen = len(notify.messages)
        relay.write_config(relay.config_text().replace("drain_time: 5.0", "drain_time: -1"))
        relay.signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", after=seen)
        usec = int(next(f for f in reloading.split("\n") if f.startswith("MONOTONIC_USEC="))[15:])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
        refused = notify.wait("READY=1", after=seen)
        assert "last reload refused" in refused and f"{relay.config}:" in refused

        seen = len(notify.messages)
        relay.signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.wait("STOPPING=1", after=seen)
        assert relay.wait_exit(10) == 0
    finally:
        notify.close()
