"""`oauth-relay reload`: signal the running master and, with --wait, report its verdict."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from relay.config import ConfigInvalid, load_config
from relay.master import state

DEFAULT_RUNTIME_DIR = "/run/oauth-relay"
_RUNTIME_DIR = re.compile(r"""^runtime_dir:[ \t]*["']?([^"'#\s]+)""", re.MULTILINE)


def runtime_dir_of(config_path: str) -> str:
    """Where the master's pid and status files are, even when relay.yaml is now broken."""
    try:
        config, _ = load_config(config_path, with_users=False)
        return config.runtime_dir
    except ConfigInvalid:
        pass
    # A broken file is exactly what a refused reload is about: find the one setting by hand.
    try:
        with open(config_path, encoding="utf-8", errors="replace") as handle:
            match = _RUNTIME_DIR.search(handle.read())
    except OSError:
        match = None
    if match is None:
        return DEFAULT_RUNTIME_DIR
    base = os.path.dirname(os.path.abspath(config_path))
    return os.path.normpath(os.path.join(base, os.path.expanduser(match.group(1))))


def _reloads(runtime_dir: str, pid: int) -> int:
    status = state.read_status(runtime_dir) or {}
    return status.get("reloads", 0) if status.get("pid") == pid else -1


def _wait(runtime_dir: str, pid: int, before: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = state.read_status(runtime_dir) or {}
        if status.get("pid") == pid and status.get("reloads", 0) > before:
            return status
        if not state.is_relay(pid):
            return None
        time.sleep(0.1)
    return None


def reload_command(config_path: str, wait: bool = False, timeout: float = 30.0) -> int:
    runtime_dir = runtime_dir_of(config_path)
    pid = state.running_pid(runtime_dir)
    if pid is None:
        print(f"The relay is not running (no live pid in {state.pid_path(runtime_dir)}). If you changed "
              "runtime_dir in relay.yaml, a running relay still uses the old one: that change needs a "
              "restart (systemctl restart oauth-relay).", file=sys.stderr)
        return 1
    before = _reloads(runtime_dir, pid)
    os.kill(pid, signal.SIGHUP)
    if not wait:
        print(f"Reload requested (pid {pid}); the journal tells the outcome.")
        return 0
    status = _wait(runtime_dir, pid, before, timeout)
    if status is None:
        print(f"No reload outcome from pid {pid} within {timeout:g} s; see the journal.", file=sys.stderr)
        return 1
    last = status.get("last_reload") or {}
    if last.get("result") == "ok":
        print(f"Reloaded: now serving generation {last.get('generation')}.")
        return 0
    print(f"Reload refused; still serving generation {last.get('generation')}:", file=sys.stderr)
    for error in last.get("errors") or ["(no reason recorded)"]:
        print(error, file=sys.stderr)
    return 1
