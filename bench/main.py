"""`bench/run`: the six scenarios, three ways each, several runs; a table, JSON and a report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report, scenarios as S  # noqa: E402
from bench.env import WAYS, Environment  # noqa: E402

KIB, MIB = 1024, 1024 * 1024


@dataclass
class Sizes:
    # Runs per scenario. Each run measures the three ways back to back (the first way rotates),
    # so each ratio compares measurements taken seconds apart.
    bulk_runs: int = 5
    noop_runs: int = 5
    login_runs: int = 3
    smtp_runs: int = 3
    pop3_runs: int = 5
    hold_runs: int = 3
    bulk_messages: int = 200
    bulk_size: int = 256 * KIB
    big_size: int = 25 * MIB
    noops: int = 2000
    logins: int = 200
    login_clients: int = 20
    logins_each: int = 10
    login_time_limit: float = 20.0     # per way, run and mode: emailproxy's ~0.4 s logins hit it
    smtp_messages: int = 500
    smtp_sessions: int = 10
    smtp_size: int = 50 * KIB
    smtp_time_limit: float = 60.0
    pop3_messages: int = 100
    pop3_size: int = 1 * MIB
    sessions: int = 1000
    warm_sessions: int = 20
    hold_noops: int = 1000
    hold_time_limit: float = 45.0      # for opening the sessions, per way and run

    def runs(self, scenario: str) -> int:
        return getattr(self, f"{scenario}_runs")

    def set_runs(self, runs: int) -> None:
        for scenario in SCENARIOS:
            setattr(self, f"{scenario}_runs", runs)


QUICK = Sizes(bulk_runs=1, noop_runs=1, login_runs=1, smtp_runs=1, pop3_runs=1, hold_runs=1,
              bulk_messages=20, big_size=5 * MIB, noops=300, logins=20, login_clients=5, logins_each=4,
              login_time_limit=10.0, smtp_messages=50, smtp_sessions=5, smtp_time_limit=30.0, pop3_messages=10,
              sessions=100, warm_sessions=10, hold_noops=200, hold_time_limit=30.0)

SCENARIOS = ("bulk", "noop", "login", "smtp", "pop3", "hold")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def order(run: int) -> List[str]:
    """Rotate which way goes first, so no column always gets the cold (or warm) slot."""
    return list(WAYS[run % 3:] + WAYS[:run % 3])


def machine() -> Dict:
    import gevent
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as handle:
            mem = f"{int(handle.readline().split()[1]) / MIB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "gevent": gevent.__version__, "openssl": ssl.OPENSSL_VERSION,
            "dovecot": version(["dovecot", "--version"]),
            "postfix": version(["postconf", "-d", "-h", "mail_version"])}


def run_bench(sizes: Sizes, only: List[str], out: Path) -> Dict:
    started = time.monotonic()
    results: Dict = {"sizes": asdict(sizes), "scenarios": {}, "machine": machine(), "errors": [],
                     "load": {"start": os.getloadavg()}}
    env = Environment(BENCH / ".work", log)
    try:
        env.start(["bulk", "pop", "idle", "sender"])
        results["machine"]["emailproxy"] = S_version(env)
        prepare(env, sizes, only)
        results["setup_seconds"] = time.monotonic() - started
        for name in SCENARIOS:
            if name in only:
                results["scenarios"][name] = run_scenario(env, sizes, name, results)
                write_json(out, results)
    finally:
        env.close()
    results["load"]["end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
    results["seconds"] = time.monotonic() - started
    return results


def S_version(env: Environment) -> str:
    from bench import eproxy
    return eproxy.version_of(env.emailproxy_python)


def prepare(env: Environment, sizes: Sizes, only: List[str]) -> None:
    if "bulk" in only:
        t = time.monotonic()
        S.fill_mailbox(env, env.accounts["bulk"], [sizes.bulk_size] * sizes.bulk_messages + [sizes.big_size], "bulk")
        for way in env.ways.values():   # page cache, Dovecot's index, each process's first big transfer
            S.imap_bulk(way, env.accounts["bulk"], sizes.bulk_messages)
        log(f"IMAP mailbox: {sizes.bulk_messages} x {sizes.bulk_size // KIB} KiB + {sizes.big_size // MIB} MiB "
            f"in {time.monotonic() - t:.1f} s")
    if "pop3" in only:
        t = time.monotonic()
        S.fill_mailbox(env, env.accounts["pop"], [sizes.pop3_size] * sizes.pop3_messages, "pop")
        for way in env.ways.values():
            S.pop3_retr(way, env.accounts["pop"], sizes.pop3_messages)
        log(f"POP3 mailbox: {sizes.pop3_messages} x {sizes.pop3_size // MIB} MiB in {time.monotonic() - t:.1f} s")
    for way in env.ways.values():   # each way's first login (token, password hash) happens here
        S._login_once(way, env.accounts["idle"])


def run_scenario(env: Environment, sizes: Sizes, name: str, results: Dict) -> List[Dict]:
    acc = env.accounts
    jobs: Dict[str, Callable] = {
        "bulk": lambda way: S.imap_bulk(way, acc["bulk"], sizes.bulk_messages, env),
        "noop": lambda way: S.imap_noop(way, acc["idle"], sizes.noops),
        "login": lambda way: {
            "sequential": S.imap_logins_sequential(way, acc["idle"], sizes.logins, sizes.login_time_limit),
            "parallel": S.imap_logins_parallel(way, acc["idle"], sizes.login_clients, sizes.logins_each,
                                               sizes.login_time_limit)},
        "smtp": lambda way: S.smtp_send(env, way, acc["sender"], sizes.smtp_messages, sizes.smtp_sessions,
                                        sizes.smtp_size, sizes.smtp_time_limit),
        "pop3": lambda way: S.pop3_retr(way, acc["pop"], sizes.pop3_messages, env),
        "hold": lambda way: S.imap_hold(env, way, acc["idle"], sizes.sessions, sizes.warm_sessions,
                                        sizes.hold_noops, sizes.hold_time_limit),
    }
    runs = []
    for run in range(sizes.runs(name)):
        started = time.monotonic()
        figures: Dict = {"run": run + 1, "order": order(run), "load": os.getloadavg()[0]}
        if name == "hold":
            # Fresh processes: per-session memory measured on a clean heap, not on what the
            # 25 MB FETCH of scenario 1 left behind.
            env.restart_relay()
            env.emailproxy.restart()
        for way_name in order(run):
            way = env.ways[way_name]
            try:
                if name == "hold":
                    S._login_once(way, acc["idle"])
                figures[way_name] = jobs[name](way)
            except Exception as exc:
                log(f"  {name} / {way_name} failed: {exc!r}")
                results["errors"].append({"run": run + 1, "scenario": name, "way": way_name,
                                          "error": traceback.format_exc()[-3000:]})
                figures[way_name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            finally:
                if name == "hold":
                    S.wait_for_upstream_sessions_to_end(env)
        runs.append(figures)
        log(f"{name} run {run + 1}/{sizes.runs(name)}: {report.one_line(name, figures)} "
            f"({time.monotonic() - started:.1f} s, load {figures['load']:.1f})")
    return runs


def write_json(out: Path, results: Dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    temp = out / "latest.json.tmp"
    temp.write_text(json.dumps(results, indent=1, default=str))
    temp.replace(out / "latest.json")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and one run, for development")
    parser.add_argument("--runs", type=int, help="runs of every scenario (default 3 to 5; medians are reported)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)}")
    parser.add_argument("--out", default=str(BENCH / "results"),
                        help="where latest.json and REPORT.md go (default bench/results)")
    parser.add_argument("--hold-seconds", type=float,
                        help="time limit for opening scenario 6's sessions, per way (default 45)")
    parser.add_argument("--no-report", action="store_true", help="JSON only, leave REPORT.md alone")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rebuild the table and REPORT.md from OUT/latest.json")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.runs:
        sizes.set_runs(args.runs)
    if args.hold_seconds:
        sizes.hold_time_limit = args.hold_seconds
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "latest.json").read_text())
        fresh = machine()   # fill in what an older bench could not tell
        results["machine"].update({k: v for k, v in fresh.items() if results["machine"].get(k) in (None, "?")})
    else:
        results = run_bench(sizes, only, out)
        results["quick"] = args.quick
        results["command"] = " ".join(["bench/run"] + list(argv if argv is not None else sys.argv[1:]))
    summary = report.summarize(results)
    results["summary"] = summary
    write_json(out, results)
    table = report.table(summary)
    print(table)
    print(f"\nwhole run: {results['seconds']:.0f} s; JSON in {out / 'latest.json'}")
    if not args.no_report:
        (out / "REPORT.md").write_text(report.markdown(results, summary, BENCH / "analysis.md"))
        print(f"report: {out / 'REPORT.md'}")
    return 1 if results["errors"] else 0
