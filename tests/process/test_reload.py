"""HUP and `oauth-relay reload --wait`: all or nothing, listeners move, errors point at the file."""

from __future__ import annotations

import re
import signal
import socket

from tests.process.helpers import free_port, greeting, wait_for


def test_broken_relay_yaml_is_refused_and_the_relay_keeps_serving(relay):
    workers = sorted(relay.serving_pids())
    relay.write_config(relay.config_text().replace("drain_time: 5.0", "drain_time: -1"))
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode != 0
    assert re.search(rf"^{re.escape(str(relay.config))}:\d+:\d+: limits.drain_time: ", result.stderr, re.M), result.stderr
    status = relay.status()
    assert status["generation"] == 1 and status["last_reload"]["result"] == "refused"
    assert sorted(relay.serving_pids()) == workers
    assert all(relay.answers(protocol) for protocol in relay.ports)
    journal = relay.journal()
    assert "reload_refused" in journal and f"{relay.config}:" in journal


def test_a_yaml_syntax_error_is_refused_with_its_place(relay):
    relay.write_config(relay.config_text() + "limits: [\n")
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode != 0
    assert re.search(rf"{re.escape(str(relay.config))}:\d+:\d+:", result.stderr), result.stderr
    assert relay.answers("imap")


def test_changed_port_moves_the_listener_and_the_others_go_on(relay):
    old_port, old_workers = relay.ports["imap"], relay.serving_pids()
    relay.ports["imap"] = free_port()
    relay.write_config()
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert "generation 2" in result.stdout
    assert relay.answers("imap")
    assert relay.answers("pop3") and relay.answers("smtp")
    wait_for(lambda: greeting(old_port, 0.5) is None, 5, what="the old port to close")
    status = relay.wait_serving(generation=2)
    assert not set(old_workers) & {worker["pid"] for worker in status["workers"]}
    assert f"imap@127.0.0.1:{relay.ports['imap']}" in status["listeners"]


def test_a_new_port_in_use_refuses_the_reload(relay):
    old_port = relay.ports["pop3"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        relay.ports["pop3"] = squatter.getsockname()[1]
        relay.write_config()
        result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode != 0
    assert f"127.0.0.1:{relay.ports['pop3']}" in result.stderr
    assert greeting(old_port).startswith(b"+OK") and relay.status()["generation"] == 1


def test_hup_without_changes_replaces_the_workers(relay):
    old = set(relay.serving_pids())
    relay.signal(signal.SIGHUP)
    status = relay.wait_serving(generation=2)
    assert old.isdisjoint(worker["pid"] for worker in status["workers"])
    assert status["last_reload"]["result"] == "ok"
    assert all(relay.answers(protocol) for protocol in relay.ports)


def test_reload_without_a_running_relay_fails(relay_factory):
    relay = relay_factory()
    result = relay.reload_command("--wait", "--timeout", "2")
    assert result.returncode != 0 and "not running" in result.stderr


def restart_only_error(relay, setting: str, old: str, new: str, line: int) -> str:
    return (rf"^{re.escape(str(relay.config))}:{line}:{len(setting) + 3}: {setting}: changed from "
            rf"{re.escape(str(relay.dir / old))} to {re.escape(str(relay.dir / new))}: this needs a restart, "
            rf"not a reload \(.+\): systemctl restart oauth-relay, or set it back to {re.escape(str(relay.dir / old))}$")


def test_a_new_state_dir_is_refused_until_a_restart(relay):
    """Served from another state_dir, the relay would make an empty token store, a new key and
    certificate there: every signed-in account would look lost."""
    workers = sorted(relay.serving_pids())
    relay.write_config(relay.config_text().replace("state_dir: state\n", "state_dir: state2\n"))
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode != 0
    assert re.search(restart_only_error(relay, "state_dir", "state", "state2", 2), result.stderr, re.M), result.stderr
    assert not (relay.dir / "state2").exists()       # refused before anything was made there
    assert relay.status()["generation"] == 1 and sorted(relay.serving_pids()) == workers
    assert all(relay.answers(protocol) for protocol in relay.ports)


def test_a_new_runtime_dir_is_refused_until_a_restart(relay):
    relay.write_config(relay.config_text().replace("runtime_dir: run\n", "runtime_dir: run2\n"))
    # `reload` looks for the pid in the runtime_dir the file names now, finds none, and says
    # what that may mean; the running relay is not touched.
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode == 1 and "If you changed runtime_dir" in result.stderr, result.stderr
    assert relay.status().get("reloads", 0) == 0
    relay.signal(signal.SIGHUP)
    status = wait_for(lambda: relay.status().get("reloads") == 1 and relay.status(), 20, what="the reload outcome")
    assert status["generation"] == 1 and status["last_reload"]["result"] == "refused"
    (error,) = status["last_reload"]["errors"]
    assert re.match(restart_only_error(relay, "runtime_dir", "run", "run2", 3), error), error
    assert not (relay.dir / "run2").exists()
    assert relay.answers("imap")


def test_a_credential_file_the_relay_cannot_read_refuses_the_reload(relay):
    relay.write_config(relay.config_text().replace(
        "type: public}", "type: confidential, flow: client_credentials, client_secret_file: /nonexistent/secret}"))
    result = relay.reload_command("--wait", "--timeout", "20")
    assert result.returncode != 0
    assert re.search(rf"^{re.escape(str(relay.config))}:\d+:\d+: apps.test.client_secret_file: cannot read "
                     r"/nonexistent/secret: No such file or directory$", result.stderr, re.M), result.stderr
    assert relay.status()["generation"] == 1 and relay.answers("smtp")
