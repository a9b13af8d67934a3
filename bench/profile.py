"""Where the time goes: one scenario through one way in a loop, with CPU shares and py-spy.

    python -m bench.profile bulk relay [--seconds 15] [--py-spy]

Prints the CPU seconds each process used (the client, the relay worker, Dovecot's and
Postfix's processes, emailproxy) while the loop ran, and with --py-spy writes a py-spy
profile of the server under test (the relay worker or emailproxy) to bench/.work/.
py-spy is not a dependency: `pip install py-spy` where bench/run's python lives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench import scenarios as S  # noqa: E402
from bench.env import Environment  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> Dict[int, tuple]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                head, tail = handle.read().rsplit(")", 1)
            fields = tail.split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                name = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:90]
        except OSError:
            continue
        # utime + stime, plus the reaped children's (Dovecot forks a process per session)
        table[int(entry)] = (name or head.split("(", 1)[1], sum(int(f) for f in fields[11:15]) / TICKS)
    return table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["bulk", "big", "noop", "login", "pop3", "smtp"])
    parser.add_argument("way", choices=["direct", "relay", "emailproxy", "floor"])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--py-spy", action="store_true")
    args = parser.parse_args()
    env = Environment(BENCH / ".work", lambda m: print(m, file=sys.stderr))
    try:
        env.start(["bulk", "pop", "idle", "sender"])
        if args.way == "floor":
            env.start_floor()
        acc, way = env.accounts, env.ways[args.way]
        if args.scenario == "bulk":
            S.fill_mailbox(env, acc["bulk"], [256 * 1024] * 200 + [25 * 1024 * 1024], "bulk")
        if args.scenario == "big":
            S.fill_mailbox(env, acc["bulk"], [25 * 1024 * 1024], "bulk")
        if args.scenario == "pop3":
            S.fill_mailbox(env, acc["pop"], [1024 * 1024] * 100, "pop")
        S._login_once(way, acc["idle"])
        work = {
            "bulk": lambda: S.imap_bulk(way, acc["bulk"], 200),
            "big": lambda: S.imap_bulk(way, acc["bulk"], 0),
            "noop": lambda: S.imap_noop(way, acc["idle"], 2000),
            "login": lambda: S.imap_logins_sequential(way, acc["idle"], 50, 30),
            "pop3": lambda: S.pop3_retr(way, acc["pop"], 100),
            "smtp": lambda: S.smtp_send(env, way, acc["sender"], 200, 10, 50 * 1024, 60),
        }[args.scenario]
        work()
        target = {"relay": env.relay_worker_pid({"pop3": "pop3-tls", "smtp": "smtp-tls"}.get(args.scenario, "imap-tls"))
                  if args.way == "relay" else None,
                  "emailproxy": env.emailproxy.pid,
                  "floor": getattr(env, "floor", None) and env.floor.pid}.get(args.way)
        spy = None
        if args.py_spy and target:
            out = BENCH / ".work" / f"profile-{args.scenario}-{args.way}.txt"
            spy = subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--pid", str(target), "--format",
                                    "raw", "--rate", "250", "--nonblocking", "--output", str(out),
                                    "--duration", str(int(args.seconds) + 5)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before, wall, rounds = cpu_by_process(), time.monotonic(), 0
        results = []
        while time.monotonic() - wall < args.seconds:
            results.append(work())
            rounds += 1
        wall = time.monotonic() - wall
        after = cpu_by_process()
        me = os.getpid()
        used = []
        for pid, (name, seconds) in after.items():
            spent = seconds - before.get(pid, (name, 0.0))[1] if pid in before else seconds
            if spent > 0.05:
                used.append((spent, pid, "bench client" if pid == me else name))
        print(f"{rounds} rounds in {wall:.1f} s; last result {results[-1]}")
        for spent, pid, name in sorted(used, reverse=True)[:15]:
            print(f"  {spent / wall * 100:5.1f} % of a core  {pid:>7}  {name}")
        if spy:
            spy.wait(timeout=60)
            print(f"py-spy profile: {out}")
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
