"""QUIT is a fast stop like INT; $OAUTH_RELAY_CONFIG names relay.yaml when --config is absent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.process.helpers import REPO, ImapClient, alive, read_line, wait_for


def relay_command(*args: str, env: dict, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`oauth-relay ARGS` with `env` added to the environment and no --config of its own."""
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    environment.pop("OAUTH_RELAY_CONFIG", None)
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=str(REPO), env=environment,
                          capture_output=True, text=True, timeout=timeout)


def test_quit_stops_at_once_and_cuts_open_sessions(relay_factory):
    relay = relay_factory(drain_time=30).start()
    pids = relay.serving_pids()
    with ImapClient(relay.ports["imap"]) as client:
        assert client.greeting.startswith(b"* OK")
        started = time.monotonic()
        relay.signal(signal.SIGQUIT)
        assert relay.wait_exit(10) == 0
        elapsed = time.monotonic() - started
        client.sock.settimeout(2)
        # Cut, not left to drain for 30 s; not logged in yet, so told why first.
        assert read_line(client.sock) == b"* BYE Server shutting down\r\n"
        assert client.sock.recv(100) == b""
    assert elapsed < 5                                   # FAST_STOP is 3 s; drain_time 30 s
    wait_for(lambda: not any(alive(pid) for pid in pids), 2, what="the workers to be gone")
    journal = relay.journal()
    assert "stopping role=master mode=fast" in journal
    stopped = [line for line in journal.splitlines() if " worker_stopped " in line]
    assert len(stopped) == 3 and all(" mode=fast " in line for line in stopped), stopped   # by themselves
    cut = [line for line in journal.splitlines() if " sessions_cut " in line]
    assert len(cut) == 1 and "sessions=1" in cut[0] and 'reason="fast stop"' in cut[0], cut
    assert "stopped role=master exit_code=0" in journal
    assert not (relay.runtime_dir / "relay.pid").exists()


def test_the_environment_names_the_config_when_no_option_does(relay_factory):
    relay = relay_factory()
    env = {"OAUTH_RELAY_CONFIG": str(relay.config)}
    # serve without --config: the relay of $OAUTH_RELAY_CONFIG starts and serves.
    environment = dict(os.environ, PYTHONPATH=str(REPO), **env)
    environment.pop("NOTIFY_SOCKET", None)
    relay.stdout = open(relay.dir / "stdout.txt", "ab")
    relay.proc = subprocess.Popen([sys.executable, "-m", "relay", "serve"], cwd=str(REPO), env=environment,
                                  stdin=subprocess.DEVNULL, stdout=relay.stdout, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    relay.wait_serving()
    assert f"config={relay.config} " in relay.journal().splitlines()[0]
    assert all(relay.answers(protocol) for protocol in relay.ports)

    checked = relay_command("check-config", env=env)
    assert checked.returncode == 0 and checked.stdout.startswith(f"{relay.config}: OK"), checked
    reloaded = relay_command("reload", "--wait", "--timeout", "20", env=env)
    assert reloaded.returncode == 0 and "generation 2" in reloaded.stdout, reloaded
    relay.wait_serving(generation=2)

    # --config wins over the environment; without either, the error names the file tried.
    missing = relay.dir / "missing.yaml"
    assert relay_command("check-config", "--config", str(relay.config), env={"OAUTH_RELAY_CONFIG": str(missing)}
                         ).returncode == 0
    refused = relay_command("check-config", env={"OAUTH_RELAY_CONFIG": str(missing)})
    assert refused.returncode == 78 and f"{missing}:1:1: " in refused.stderr, refused
