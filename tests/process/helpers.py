"""Real relay processes for the process-model tests: `python -m relay serve` in a tmp dir.

Pre-login answers (`* OK`, `+OK`, `220`) show a worker serves, so no identity provider or
upstream is needed. Each relay runs in its own session (process group), which cleanup()
kills, so no worker outlives a test.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_GREETINGS = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220"}


@functools.lru_cache(maxsize=None)
def password_hash(password: str) -> str:
    from relay.passwords import hash_password

    return hash_password(password, log_n=4)  # cheap on purpose: tests hash many times


def users_yaml(users: Dict[str, str]) -> str:
    return "".join(f"{name}:\n  password: \"{password_hash(password)}\"\n  account: {name}@contoso.com\n"
                   for name, password in users.items())


def greeting(port: int, timeout: float = 2.0) -> Optional[bytes]:
    """The first line a listener sends, or None if it refuses or stays silent."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return read_line(sock)
    except OSError:
        return None


def read_line(sock: socket.socket, limit: int = 8192) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Relay:
    """One relay under test: its files, its process, and ways to look at it."""

    def __init__(self, tmp_path: Path, protocols=("imap", "pop3", "smtp"), users=None,
                 drain_time: float = 5.0, journal_file: str = "relay.log", extra: str = ""):
        self.dir = tmp_path
        self.ports = {protocol: free_port() for protocol in protocols}
        self.upstream_port = free_port()     # nothing listens: probes fail fast, as journaled
        self.drain_time = drain_time
        self.journal_file = journal_file
        self.extra = extra
        self.config = tmp_path / "relay.yaml"
        self.users_file = tmp_path / "users.yaml"
        self.runtime_dir = tmp_path / "run"
        self.proc: Optional[subprocess.Popen] = None
        self.write_users(users if users is not None else {"alice": "alice-pw"})
        self.write_config()

    # Files ---------------------------------------------------------------------------------

    def config_text(self) -> str:
        listeners = "".join(f'  - {{protocol: {protocol}, listen: "127.0.0.1:{port}", security: starttls}}\n'
                            for protocol, port in self.ports.items())
        upstream = "".join(f"  {protocol}: {{host: 127.0.0.1, port: {self.upstream_port}, security: tls}}\n"
                           for protocol in ("imap", "pop3", "smtp"))
        return (f"journal: {{level: debug, file: {self.journal_file}}}\n"
                "state_dir: state\nruntime_dir: run\nusers: users.yaml\ntls: auto\n"
                f"upstream:\n{upstream}"
                "apps:\n  test: {client_id: 11111111-2222-3333-4444-555555555555, "
                "tenant: contoso.onmicrosoft.com, type: public}\n"
                f"listeners:\n{listeners}"
                "auth: {failure_delay: 0, max_failures: 100000}\n"
                f"limits: {{preauth_timeout: 30, drain_time: {self.drain_time}}}\n" + self.extra)

    def write_config(self, text: Optional[str] = None) -> None:
        write_by_rename(self.config, text if text is not None else self.config_text())

    def write_users(self, users: Dict[str, str]) -> None:
        write_by_rename(self.users_file, users_yaml(users))

    # Process -------------------------------------------------------------------------------

    def start(self, env: Optional[dict] = None, wait: bool = True) -> "Relay":
        environment = dict(os.environ, PYTHONPATH=str(REPO))
        environment.pop("NOTIFY_SOCKET", None)
        environment.update(env or {})
        self.stdout = open(self.dir / "stdout.txt", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                                     cwd=str(REPO), env=environment, stdin=subprocess.DEVNULL,
                                     stdout=self.stdout, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_serving()
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self.stdout.flush()
        return (self.dir / "stdout.txt").read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # our own session: master and its workers
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        self.stdout.close()

    # Looking at it -------------------------------------------------------------------------

    def status(self) -> dict:
        try:
            return json.loads((self.runtime_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def serving_pids(self, protocol: Optional[str] = None) -> List[int]:
        name = f"{protocol}@127.0.0.1:{self.ports[protocol]}" if protocol else None
        return [worker["pid"] for worker in self.status().get("workers", [])
                if worker["state"] == "serving" and (name is None or worker["listener"] == name)]

    def wait_serving(self, timeout: float = 20.0, generation: Optional[int] = None) -> dict:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
            status = self.status()
            workers = status.get("workers", [])
            return status if (status.get("state") == "running" and workers
                              and all(w["state"] == "serving" for w in workers)
                              and (generation is None or status.get("generation") == generation)) else None
        return wait_for(ready, timeout, what="the relay to serve")

    def journal(self) -> str:
        path = self.dir / self.journal_file
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_journal(self, text: str, timeout: float = 5.0) -> str:
        return wait_for(lambda: text in self.journal() and self.journal(), timeout, what=f"{text!r} in the journal")

    def greeting(self, protocol: str, timeout: float = 2.0) -> Optional[bytes]:
        return greeting(self.ports[protocol], timeout)

    def answers(self, protocol: str, timeout: float = 2.0) -> bool:
        line = self.greeting(protocol, timeout)
        return bool(line) and line.startswith(PROTOCOL_GREETINGS[protocol])

    def reload_command(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relay", "reload", "--config", str(self.config), *args],
                              cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                              capture_output=True, text=True, timeout=timeout)


def write_by_rename(path: Path, text: str) -> None:
    """Save as editors do: a temp file renamed over the old one."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


class ImapClient:
    """Just enough IMAP to hold a session open and to try a LOGIN."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.greeting = read_line(self.sock)
        self.tag = 0

    def command(self, text: str) -> bytes:
        self.tag += 1
        tag = f"t{self.tag}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        while True:
            line = read_line(self.sock)
            if not line or line.startswith(tag + b" "):
                return line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ImapClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
