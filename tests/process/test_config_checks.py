"""What check-config finds, serve finds at start too; a users file emptied in service is journaled."""

from __future__ import annotations

import re

from tests.process.helpers import wait_for, write_by_rename

NO_USERS = ('hint="the users file defines no users now, so every login fails; '
            'restore it or add users with `oauth-relay user add`"')


def users_reloaded(relay, count: int):
    """The journal's users_reloaded lines, once there are `count` of them."""
    def lines():
        found = [line for line in relay.journal().splitlines() if " users_reloaded " in line]
        return found if len(found) >= count else None
    return wait_for(lines, 10, what=f"{count} users_reloaded in the journal")


def test_serve_refuses_tls_files_it_cannot_use_with_their_place(relay_factory):
    relay = relay_factory()
    relay.write_config(relay.config_text().replace(
        "tls: auto\n", "tls: {certificate: /nonexistent.pem, key: /nonexistent.key}\n"))
    relay.start(wait=False)
    assert relay.wait_exit(20) == 78
    assert relay.output() == (
        f"{relay.config}:5:20: tls.certificate: cannot read /nonexistent.pem: No such file or directory\n"
        f"{relay.config}:5:43: tls.key: cannot read /nonexistent.key: No such file or directory\n")


def test_a_users_file_emptied_in_service_is_a_warning_and_none_to_none_is_not(relay):
    relay.users_file.write_text("")                        # `: > users.yaml`
    (line,) = users_reloaded(relay, 1)
    assert re.search(rf" warning users_reloaded role=master path={re.escape(str(relay.users_file))} users=0 "
                     rf"before=1 {re.escape(NO_USERS)}$", line), line
    write_by_rename(relay.users_file, "# nobody yet\n")     # as shipped: comments only
    second = users_reloaded(relay, 2)[1]
    assert re.search(rf" info +users_reloaded role=master path={re.escape(str(relay.users_file))} users=0$",
                     second), second


def test_a_reload_onto_a_users_file_without_users_is_a_warning(relay):
    (relay.dir / "nobody.yaml").write_text("# nobody yet\n")
    relay.write_config(relay.config_text().replace("users: users.yaml\n", "users: nobody.yaml\n"))
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode == 0, result.stderr            # legitimate: not refused
    (line,) = users_reloaded(relay, 1)
    assert re.search(rf" warning users_reloaded role=master path={re.escape(str(relay.dir / 'nobody.yaml'))} "
                     rf"users=0 before=1 {re.escape(NO_USERS)}$", line), line
