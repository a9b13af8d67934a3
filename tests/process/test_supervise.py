"""The master restarts workers that die or hang; the other listeners keep answering."""

from __future__ import annotations

import os
import signal
import time

from tests.process.helpers import alive, wait_for


def test_kill_9_of_each_worker_is_replaced_within_two_seconds(relay):
    for protocol in relay.ports:
        (victim,) = relay.serving_pids(protocol)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # A client that connects now waits in the backlog until the successor accepts it.
        assert relay.answers(protocol, timeout=2.0)
        assert time.monotonic() - killed < 2.0
        for other in relay.ports:
            if other != protocol:
                assert relay.answers(other), f"{other} stopped answering while {protocol} restarted"
        successor = wait_for(lambda: [pid for pid in relay.serving_pids(protocol) if pid != victim], 5,
                             what=f"a new {protocol} worker")
        assert not alive(victim) and successor
        relay.wait_journal(f"worker_died role=master worker={victim}")
    assert relay.journal().count('how="killed by SIGKILL"') == 3


def test_a_hung_worker_is_killed_and_replaced(relay):
    (victim,) = relay.serving_pids("pop3")
    os.kill(victim, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        while time.monotonic() - stopped < 3:      # meanwhile the others answer
            assert relay.answers("imap") and relay.answers("smtp")
            time.sleep(0.5)
        wait_for(lambda: [pid for pid in relay.serving_pids("pop3") if pid != victim], 20,
                 what="the hung pop3 worker's successor")
        assert relay.answers("pop3")
        assert not alive(victim)
        journal = relay.journal()
        assert f"worker_killed role=master worker={victim}" in journal and "no heartbeat" in journal
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGCONT)


def test_workers_stop_when_the_master_dies(relay):
    workers = relay.serving_pids()
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.wait_exit(5)
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, what="the orphaned workers to exit")
    assert "master_gone" in relay.journal()
