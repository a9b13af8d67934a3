"""A good reload drops nothing: a logged-in IMAP session goes on, its old worker stays for it.

The relay runs in front of the test bed (tests/e2e/harness.py), so the held session is a real
one, logged in through to Dovecot; every listener is asked for its greeting all through the
reload.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import List, Optional

import pytest

from tests.e2e.harness import Relay
from tests.e2e.test_imap import RawImap, quoted
from tests.process.helpers import PROTOCOL_GREETINGS, alive, read_line, wait_for

PASSWORD = "reload pass 1"


@pytest.fixture(scope="module")
def relay(bed, tmp_path_factory):
    # drain_time well above the test's length: no session may be cut by the clock here.
    instance = Relay(bed, tmp_path_factory.mktemp("reload"), limits={"drain_time": 60}, journal_level="info")
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def user(relay):
    return relay.new_user(protocols=["imap"], password=PASSWORD)


def status(relay) -> dict:
    try:
        return json.loads((relay.root / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def greeting(relay, bed, name: str) -> Optional[bytes]:
    """The first line the listener `name` (e.g. "imap-tls") sends, or None."""
    try:
        with socket.create_connection(("127.0.0.1", relay.ports[name]), timeout=3) as raw:
            raw.settimeout(3)
            if not name.endswith("-tls"):
                return read_line(raw)
            with bed.ssl_context().wrap_socket(raw, server_hostname="localhost") as sock:
                return read_line(sock)
    except OSError:
        return None


def listener_name(relay, name: str) -> str:
    return f"{name.split('-')[0]}@127.0.0.1:{relay.ports[name]}"


def test_a_reload_keeps_a_logged_in_session_and_every_listener_answers(relay, bed, user):
    before = status(relay)
    assert before["state"] == "running"
    old = {worker["listener"]: worker["pid"] for worker in before["workers"]}
    held_by = old[listener_name(relay, "imap-tls")]
    with RawImap.open(relay, bed, "tls") as held:
        login = held.command(b"a1", b"LOGIN " + quoted(user.name) + b" " + quoted(PASSWORD))
        assert login[-1].startswith(b"a1 OK"), login

        relay.process.send_signal(signal.SIGHUP)
        # All through the reload, every listener greets: round after round until the new
        # generation serves and the old workers without sessions are gone.
        refused: List[str] = []
        rounds = 0
        deadline = time.monotonic() + 30
        while True:
            for name in relay.ports:
                line = greeting(relay, bed, name)
                if not (line or b"").startswith(PROTOCOL_GREETINGS[name.split("-")[0]]):
                    refused.append(f"round {rounds}: {name} answered {line!r}")
            rounds += 1
            now = status(relay)
            idle_old_gone = not [pid for pid in old.values() if pid != held_by and alive(pid)]
            if now.get("generation") == 2 and now.get("state") == "running" and idle_old_gone:
                break
            assert time.monotonic() < deadline, f"the reload did not settle: {now}"
        assert not refused, "\n".join(refused)
        assert rounds >= 2
        assert now["last_reload"]["result"] == "ok"
        new = {worker["pid"] for worker in now["workers"] if worker["generation"] == 2}
        assert len(new) == 6 and not new & set(old.values())

        # The old IMAPS worker stays for the held session, draining it.
        assert alive(held_by)
        assert {"pid": held_by, "listener": listener_name(relay, "imap-tls"), "generation": 1,
                "state": "retiring"} in now["workers"]
        wait_for(lambda: f"worker_draining listener={listener_name(relay, 'imap-tls')}" in relay.journal_text(),
                 10, "the old worker to say it drains")
        assert held.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")
        lines = held.command(b"a3", b"SELECT INBOX")
        assert lines[-1].startswith(b"a3 OK") and any(line.endswith(b" EXISTS") for line in lines), lines
        assert alive(held_by)
        lines = held.command(b"a4", b"LOGOUT")
        assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"a4 OK"), lines
        assert held.closed()

    # Its last session over, the old worker exits by itself, long before its drain time.
    wait_for(lambda: not alive(held_by), 10, "the old worker to exit after the LOGOUT")
    journal = relay.journal_text()
    assert f'worker_exited role=master worker={held_by} ' in journal
    exited = [line for line in journal.splitlines() if f"worker_exited role=master worker={held_by} " in line]
    assert 'how="exited with code 0"' in exited[0], exited
    assert "sessions_cut" not in journal
    assert [w["pid"] for w in status(relay)["workers"]] and all(
        w["generation"] == 2 and w["state"] == "serving" for w in status(relay)["workers"])
