"""users.yaml edits reach every worker within two seconds; open sessions are not cut.

Observable without an identity provider: an unknown user or a wrong password gets
`NO [AUTHENTICATIONFAILED] Authentication failed.`, a good login reaches the token step and
gets a NO that asks for a sign-in, because no token exists.
"""

from __future__ import annotations

import os
import re
import signal
import time

from tests.process.helpers import ImapClient, wait_for, write_by_rename

WITHIN = 2.0


def login(relay, user: str, password: str) -> str:
    with ImapClient(relay.ports["imap"]) as client:
        line = client.command(f"LOGIN {user} {password}")
    if b"sign-in" in line:
        return "accepted"       # the local password was right: on to the (absent) token
    if b"Authentication failed" in line:
        return "refused"
    raise AssertionError(line)


def becomes(relay, user: str, password: str, expected: str) -> float:
    started = time.monotonic()
    wait_for(lambda: login(relay, user, password) == expected, WITHIN, interval=0.05,
             what=f"{user}/{password} to be {expected}")
    return time.monotonic() - started


def test_add_change_remove_and_break_users_while_a_session_stays_open(relay):
    with ImapClient(relay.ports["imap"]) as held:
        assert login(relay, "alice", "alice-pw") == "accepted"
        assert login(relay, "bob", "bob-pw") == "refused"

        relay.write_users({"alice": "alice-pw", "bob": "bob-pw"})
        becomes(relay, "bob", "bob-pw", "accepted")

        relay.write_users({"alice": "new-pw", "bob": "bob-pw"})
        becomes(relay, "alice", "alice-pw", "refused")
        assert login(relay, "alice", "new-pw") == "accepted"

        relay.write_users({"alice": "new-pw"})
        becomes(relay, "bob", "bob-pw", "refused")

        write_by_rename(relay.users_file, "alice:\n  password: not-a-hash\n")
        journal = relay.wait_journal("users_refused", timeout=WITHIN)
        assert re.search(rf"users_error .*{re.escape(str(relay.users_file))}:2:13: alice.password: ", journal)
        assert login(relay, "alice", "new-pw") == "accepted"      # the last good mapping
        assert relay.status()["users"]["errors"]

        relay.write_users({"carol": "carol-pw"})
        becomes(relay, "carol", "carol-pw", "accepted")
        assert login(relay, "alice", "new-pw") == "refused"
        assert relay.status()["users"]["errors"] == []

        assert held.command("NOOP").startswith(b"t1 OK")       # never cut


def test_a_save_without_changes_is_ignored(relay):
    relay.write_users({"alice": "other-pw"})
    relay.wait_journal("users_reloaded")
    write_by_rename(relay.users_file, relay.users_file.read_text())  # byte for byte the same
    relay.wait_journal("users_unchanged")
    time.sleep(0.5)
    assert relay.journal().count("users_reloaded") == 1
    assert relay.journal().count("users_swapped") == 3         # once in each worker
    assert login(relay, "alice", "other-pw") == "accepted"


def test_workers_started_later_get_the_current_users(relay):
    relay.write_users({"dave": "dave-pw"})
    becomes(relay, "dave", "dave-pw", "accepted")
    (victim,) = relay.serving_pids("imap")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: [pid for pid in relay.serving_pids("imap") if pid != victim], 5, what="a new imap worker")
    assert login(relay, "dave", "dave-pw") == "accepted"
