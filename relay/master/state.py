"""The master's files in runtime_dir: relay.pid and status.json (read by `oauth-relay reload`)."""

from __future__ import annotations

import json
import os
from typing import Optional

from relay.atomic_file import write_atomically

PID_FILE = "relay.pid"
STATUS_FILE = "status.json"


def pid_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, PID_FILE)


def status_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, STATUS_FILE)


def write_atomic(path: str, text: str) -> None:
    # Readers poll these files: they must see the old or the new text, never half of one.
    write_atomically(path, text.encode("utf-8"), mode=0o644, durable=False)


def read_pid(runtime_dir: str) -> Optional[int]:
    try:
        with open(pid_path(runtime_dir), encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def is_relay(pid: int) -> bool:
    """True when `pid` is alive and looks like a relay (a stale pid file may name anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"relay" in handle.read()
    except OSError:
        return True  # no /proc to ask: trust the pid file


def running_pid(runtime_dir: str) -> Optional[int]:
    pid = read_pid(runtime_dir)
    return pid if pid and pid != os.getpid() and is_relay(pid) else None


def write_pid(runtime_dir: str) -> None:
    os.makedirs(runtime_dir, mode=0o755, exist_ok=True)
    write_atomic(pid_path(runtime_dir), f"{os.getpid()}\n")


def remove_pid(runtime_dir: str) -> None:
    if read_pid(runtime_dir) == os.getpid():
        try:
            os.unlink(pid_path(runtime_dir))
        except OSError:
            pass


def write_status(runtime_dir: str, status: dict) -> None:
    try:
        write_atomic(status_path(runtime_dir), json.dumps(status, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a full /run must not stop the relay; `reload --wait` then times out visibly


def read_status(runtime_dir: str) -> Optional[dict]:
    try:
        with open(status_path(runtime_dir), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
