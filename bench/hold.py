"""Scenario 6's client: holds many authenticated IMAP sessions from one separate process.

A gevent process (one core at most, small buffers, non-blocking sockets under the hood), so
the 1,000 clients cost little next to the server under test and never share its process.
Driven by the bench over stdin/stdout, one JSON object per line:

  start   -> opens `warm` sessions, measures NOOPs on them          -> {"event": "warm", ...}
  "grow"  -> opens the rest up to `total` (bounded concurrency/time) -> {"event": "held", ...}
  "noop"  -> NOOPs on the warm sessions again, then over every session -> {"event": "loaded", ...}
  "close" -> closes everything                                       -> {"event": "closed"}
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

from bench.clients import Imap, now  # noqa: E402

BUFFER = 4096


def say(**message) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Holder:
    def __init__(self, spec: dict):
        self.spec = spec
        self.context = ssl.create_default_context(cafile=spec["ca_file"])
        self.sessions = []
        self.errors = {}
        self.failed = 0

    def open_one(self) -> None:
        spec = self.spec
        try:
            conn = Imap((spec["host"], spec["port"]), self.context, spec["hostname"], timeout=spec["timeout"],
                        buffer_size=BUFFER)
        except Exception as exc:
            self._failed(exc)
            return
        try:
            if spec["kind"] == "xoauth2":
                conn.xoauth2(spec["user"], spec["secret"])
            else:
                conn.login(spec["user"], spec["secret"])
            conn.ok(b"NOOP")
        except Exception as exc:
            conn.close()
            self._failed(exc)
            return
        self.sessions.append(conn)

    def _failed(self, exc: Exception) -> None:
        self.failed += 1
        key = f"{type(exc).__name__}: {exc}"[:160]
        self.errors[key] = self.errors.get(key, 0) + 1

    def open_until(self, total: int, deadline: float) -> float:
        started = now()
        pool = gevent.pool.Pool(self.spec["concurrency"])
        while len(self.sessions) + len(pool) < total and time.monotonic() < deadline:
            if self.failed > max(50, total // 5):   # the server is refusing: stop hammering it
                break
            pool.spawn(self.open_one)
        pool.join(timeout=max(1.0, deadline - time.monotonic()))
        pool.kill(block=True, timeout=2)
        return now() - started

    def noops(self, count: int, sessions) -> list:
        latencies = []
        for index in range(count):
            conn = sessions[index % len(sessions)]
            started = now()
            try:
                conn.ok(b"NOOP")
            except Exception as exc:
                self._failed(exc)
                continue
            latencies.append(now() - started)
        return latencies

    def close(self) -> None:
        def shut(conn):
            conn.close()
        pool = gevent.pool.Pool(100)
        for conn in self.sessions:
            pool.spawn(shut, conn)
        pool.join(timeout=30)
        self.sessions = []


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    holder = Holder(spec)
    deadline = time.monotonic() + spec["time_limit"]
    try:
        holder.open_until(spec["warm"], deadline)
        if not holder.sessions:
            say(event="warm", opened=0, failed=holder.failed, errors=holder.errors, latencies=[])
            return 1
        holder.noops(50, holder.sessions)   # warm the path
        say(event="warm", opened=len(holder.sessions), failed=holder.failed, errors=holder.errors,
            latencies=holder.noops(spec["noops"], holder.sessions))
        for line in sys.stdin:
            command = line.strip()
            if command == "grow":
                holder.failed, holder.errors = 0, {}
                seconds = holder.open_until(spec["total"], deadline)
                gevent.sleep(0.5)
                say(event="held", opened=len(holder.sessions), failed=holder.failed, errors=holder.errors,
                    seconds=seconds)
            elif command == "noop":
                # Again on the `warm` sessions measured before (same sessions, now with all the
                # others open), then spread over every held session (each one cold).
                warm = holder.sessions[:spec["warm"]]
                say(event="loaded", latencies=holder.noops(spec["noops"], warm),
                    spread=holder.noops(spec["noops"], holder.sessions), failed=holder.failed)
            elif command == "close":
                holder.close()
                say(event="closed")
                return 0
    except Exception:
        say(event="error", error=traceback.format_exc()[-2000:])
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
