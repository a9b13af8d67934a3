"""Small helpers to run the bed's daemons: free ports, waiting, clean stopping."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional, Sequence

from tests.support import free_ports  # noqa: F401  (one port allocator for the whole suite)


class BedError(RuntimeError):
    """The test bed could not do what was asked (a daemon failed to start...)."""


def require_binary(name: str, *extra_dirs: str) -> str:
    """Full path of a daemon binary; a missing one is a broken CI image, not a skip."""
    path = shutil.which(name, path=os.pathsep.join(
        list(extra_dirs) + [os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/postfix/sbin"]))
    if path is None:
        raise BedError("%s is not installed (see .ci/apt-packages)" % name)
    return path


def wait_for_banner(host: str, port: int, prefix: bytes, timeout: float,
                    proc: Optional[subprocess.Popen] = None, what: str = "") -> None:
    """Wait until a server on host:port greets with ``prefix`` (bounded in time)."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BedError("%s exited with status %s while starting" % (what, proc.returncode))
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.settimeout(2)
                data = sock.recv(512)
                if data.startswith(prefix):
                    return
                last_error = "greeting %r" % data[:80]
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise BedError("%s on %s:%d not ready after %.0f s: %s" % (what, host, port, timeout,
                                                                last_error))


def wait_until_closed(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError:
            return
        time.sleep(0.05)
    raise BedError("%s:%d still accepts connections after stop" % (host, port))


def start_process(argv: Sequence[str], log_path: str, **kwargs) -> subprocess.Popen:
    """Start a daemon in its own process group, so stop() can end all its children."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, **kwargs)


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM the daemon, wait, then SIGKILL whatever is left of its process group."""
    if proc is None:
        return
    pgid = proc.pid  # start_new_session made the daemon its group's leader
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # e.g. Dovecot's master waits for an auth process that still has
            # clients (Postfix's smtpd): end the whole group.
            _kill_group(pgid)
            proc.wait(5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.02)
    if _group_alive(pgid):
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Does any process of the group still run? Zombies do not count: their new
    parent (PID 1 in a container) may take its time to reap them."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: fall back to the signal probe
        try:
            os.killpg(pgid, 0)
            return True
        except OSError:
            return False
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as handle:
            return b"".join(handle.readlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return "(no log at %s)" % path
