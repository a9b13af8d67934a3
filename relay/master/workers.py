"""One worker process as the master sees it: spawn, control channel, heartbeats, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import relay
from relay.config.models import Config, Listener, Users
from relay.master import channel

BOOT_ERROR = 3  # a worker that exits with this could not start at all (gunicorn's WORKER_BOOT_ERROR)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _child_environment() -> dict:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # only the master speaks to systemd
    # Workers must run the very code the master runs, installed or from a source tree.
    root = os.path.dirname(os.path.dirname(os.path.abspath(relay.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class Worker:
    def __init__(self, listener: Listener, generation: int, config: Config):
        self.listener = listener
        self.generation = generation
        self.config = config            # the snapshot it serves; its drain_time bounds retiring
        self.proc: Optional[subprocess.Popen] = None
        self.channel: Optional[socket.socket] = None
        self.lines = channel.LineBuffer()
        self.outbox = b""
        self.started = self.last_beat = time.monotonic()
        self.ready = False
        self.retiring = False
        self.killed = False
        self.kill_at: Optional[float] = None   # a retiring worker past this is killed
        self.exit_code: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def spawn(self, listen_sock: socket.socket, users: Users) -> None:
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-m", "relay.worker", "--listen-fd", str(listen_sock.fileno()),
                    "--control-fd", str(worker_end.fileno()),
                    # Only for `ps`: the worker takes everything else from the init message.
                    "--listener", self.listener.name, "--generation", str(self.generation)]
            self.proc = subprocess.Popen(argv, pass_fds=(listen_sock.fileno(), worker_end.fileno()),
                                         stdin=subprocess.DEVNULL, env=_child_environment(),
                                         close_fds=True)
        except BaseException:
            master_end.close()
            raise
        finally:
            worker_end.close()
        master_end.setblocking(False)
        self.channel = master_end
        self.started = self.last_beat = time.monotonic()
        self.send("init", {"config": self.config, "users": users, "listener": self.listener,
                           "generation": self.generation})

    def send(self, kind: str, payload) -> None:
        if self.channel is not None:
            self.outbox += channel.frame(kind, payload)
            self.flush()

    def flush(self) -> None:
        # Non-blocking: a stopped worker must never stall the master; its heartbeat expires.
        while self.outbox and self.channel is not None:
            try:
                sent = self.channel.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.outbox = b""
                return
            self.outbox = self.outbox[sent:]

    def receive(self) -> list:
        """Lines the worker sent; an empty list plus a closed channel when it went away."""
        try:
            data = self.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.close_channel()
            return []
        now = time.monotonic()
        lines = self.lines.feed(data)
        for line in lines:
            self.last_beat = now
            if line == "ready":
                self.ready = True
        return lines

    def overdue(self, now: float) -> Optional[str]:
        """Why this worker must be killed now, if it must."""
        if self.killed or self.exit_code is not None:
            return None
        if self.kill_at is not None and now >= self.kill_at:
            return "still running at the end of its drain time"
        if not self.ready and now - self.started > channel.BOOT_TIMEOUT:
            return f"not serving {channel.BOOT_TIMEOUT:.0f} s after start"
        if self.ready and now - self.last_beat > channel.HEARTBEAT_TIMEOUT:
            return f"no heartbeat for {now - self.last_beat:.1f} s (hung or stopped)"
        return None

    def retire(self, grace: float = 5.0) -> None:
        """Stop accepting, finish open sessions within drain_time, then exit (SIGTERM)."""
        if not self.retiring:
            self.retiring = True
            self.kill_at = time.monotonic() + self.config.limits.drain_time + grace
            self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.killed = True
        self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.exit_code is None:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def reaped(self, code: int) -> None:
        self.exit_code = code
        if self.proc is not None:
            self.proc.returncode = code  # the arbiter reaped it: Popen must not wait again
        self.close_channel()

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.outbox = b""

    def describe(self) -> dict:
        return {"pid": self.pid, "listener": self.listener.name, "generation": self.generation,
                "state": "retiring" if self.retiring else ("serving" if self.ready else "starting")}
