"""Medians over runs, ratios pair by pair, the printed table and the markdown report."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

WAYS = ("direct", "relay", "emailproxy")


@dataclass
class Row:
    key: str
    scenario: str
    metric: str
    get: Callable[[Dict], Optional[float]]     # from one way's figures of one run
    section: str
    higher_better: bool = True
    target: str = ""
    check: Optional[Callable[[Dict], Optional[bool]]] = None    # on the summarized row
    digits: int = 1


def _path(*keys):
    def get(figures):
        value = figures
        for key in keys:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return value
    return get


def _ratio_at_least(limit):
    return lambda row: None if row["ratio_direct"] is None else row["ratio_direct"] >= limit


def _added_below(limit):
    return lambda row: None if row["added"] is None else row["added"] < limit


def _failures(figures):
    seq, par = figures.get("sequential") or {}, figures.get("parallel") or {}
    if "failures" not in seq and "failures" not in par:
        return None
    return (seq.get("failures") or 0) + (par.get("failures") or 0)


def _unchanged(row):
    """The relay's NOOP on the same sessions, with all open against with 20 open, grows by at
    most 10%, or by no more than direct's grows in the same runs (+5 points): what the machine
    and Dovecot do with 1,000 sessions is not the relay's doing."""
    relay, direct = row.get("relay_growth"), row.get("direct_growth")
    if relay is None:
        return None
    return relay <= max(1.10, (direct or 0) + 0.05)


def _hold_row(key, metric, field, **kwargs):
    return Row(key, "6. {sessions:,} IMAP sessions held", metric, _path(field), "hold", **kwargs)


ROWS: List[Row] = [
    Row("bulk_small", "1. IMAP FETCH {bulk_messages} x {bulk_kib} KiB", "MB/s", _path("small_mb_s"), "bulk",
        target="relay >= 0.8 x direct", check=_ratio_at_least(0.8)),
    Row("bulk_big", "1. IMAP FETCH 1 x {big_mib} MiB", "MB/s", _path("big_mb_s"), "bulk",
        target="relay >= 0.8 x direct", check=_ratio_at_least(0.8)),
    Row("bulk_cpu_proxy", "1. IMAP FETCH (both)", "proxy CPU s/GB", _path("proxy_cpu_s_per_gb"), "bulk", False,
        digits=2),
    Row("bulk_cpu_total", "1. IMAP FETCH (both)", "all CPU s/GB", _path("total_cpu_s_per_gb"), "bulk", False,
        digits=2),
    Row("noop_median", "2. IMAP NOOP x {noops:,}", "median ms", _path("median_ms"), "noop", False,
        "added < 0.05 ms", _added_below(0.05), 3),
    Row("noop_p99", "2. IMAP NOOP x {noops:,}", "p99 ms", _path("p99_ms"), "noop", False, digits=3),
    Row("login_seq_median", "3. login+SELECT+LOGOUT x {logins}", "median ms", _path("sequential", "median_ms"),
        "login", False, "added <= 5 ms", _added_below(5.0 + 1e-9), 1),
    Row("login_seq_p99", "3. login+SELECT+LOGOUT x {logins}", "p99 ms", _path("sequential", "p99_ms"),
        "login", False),
    Row("login_par_rate", "3. logins, {login_clients} clients in parallel", "logins/s", _path("parallel", "logins_per_s"),
        "login", True, "relay >= 0.8 x direct", _ratio_at_least(0.8)),
    Row("login_par_median", "3. logins, {login_clients} clients in parallel", "median ms", _path("parallel", "median_ms"),
        "login", False),
    Row("login_par_p99", "3. logins, {login_clients} clients in parallel", "p99 ms", _path("parallel", "p99_ms"),
        "login", False),
    Row("login_failures", "3. logins (both)", "failures", _failures, "login", False, "none",
        lambda row: None if row["values"].get("relay") is None else row["values"]["relay"] == 0, 0),
    Row("smtp_rate", "4. SMTP {smtp_messages} x {smtp_kib} KiB, {smtp_sessions} sessions", "messages/s", _path("messages_per_s"), "smtp",
        target="relay >= 0.8 x direct", check=_ratio_at_least(0.8)),
    Row("smtp_delivered", "4. SMTP {smtp_messages} x {smtp_kib} KiB, {smtp_sessions} sessions", "delivered", _path("delivered"), "smtp",
        target="all", check=lambda row: None if row["values"].get("relay") is None
        else row["values"]["relay"] >= row.get("wanted", 0), digits=0),
    Row("pop3_rate", "5. POP3 RETR {pop3_messages} x {pop3_mib} MiB", "MB/s", _path("mb_s"), "pop3",
        target="relay >= 0.8 x direct", check=_ratio_at_least(0.8)),
    Row("pop3_cpu_proxy", "5. POP3 RETR", "proxy CPU s/GB", _path("proxy_cpu_s_per_gb"), "pop3", False, digits=2),
    Row("pop3_cpu_total", "5. POP3 RETR", "all CPU s/GB", _path("total_cpu_s_per_gb"), "pop3", False, digits=2),
    _hold_row("hold_held", "sessions held", "held", digits=0),
    _hold_row("hold_kib", "KiB per session (RSS)", "kib_per_session", higher_better=False,
              target="<= 32 KiB", check=lambda row: None if row["values"].get("relay") is None
              else row["values"]["relay"] <= 32.0),
    _hold_row("hold_idle_noop", "NOOP median ms, 20 open", "idle_noop_median_ms", higher_better=False, digits=3),
    _hold_row("hold_noop", "same 20, all open: median ms", "loaded_noop_median_ms", higher_better=False,
              target="unchanged (+10%, or as direct)", check=_unchanged, digits=3),
    _hold_row("hold_noop_p99", "same 20, all open: p99 ms", "loaded_noop_p99_ms", higher_better=False, digits=3),
    _hold_row("hold_spread", "each session once: median ms", "spread_noop_median_ms", higher_better=False,
              digits=3),
]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: Dict) -> List[Dict]:
    rows = []
    sizes = results.get("sizes", {})
    for row in ROWS:
        per_run = {way: [] for way in WAYS}
        ratios_d, ratios_e, added = [], [], []
        for figures in results.get("scenarios", {}).get(row.section, []):
            values = {way: row.get(figures.get(way) or {}) for way in WAYS}
            for way in WAYS:
                per_run[way].append(values[way])
            relay, direct, other = values["relay"], values["direct"], values["emailproxy"]
            if relay is not None and direct:
                ratios_d.append(relay / direct)
            if relay is not None and other:
                ratios_e.append(relay / other)
            if relay is not None and direct is not None:
                added.append(relay - direct)
        if not any(v is not None for vs in per_run.values() for v in vs):
            continue
        summary = {"key": row.key, "scenario": _label(row.scenario, sizes), "metric": row.metric,
                   "target": row.target,
                   "higher_better": row.higher_better, "digits": row.digits,
                   "values": {way: _median(per_run[way]) for way in WAYS}, "per_run": per_run,
                   "ratio_direct": _median(ratios_d), "ratio_emailproxy": _median(ratios_e),
                   "added": _median(added) if not row.higher_better else None}
        if row.key == "smtp_delivered":
            summary["wanted"] = sizes.get("smtp_messages", 0) // max(1, sizes.get("smtp_sessions", 1)) * \
                max(1, sizes.get("smtp_sessions", 1))
        if row.key == "hold_noop":
            for way in ("relay", "direct", "emailproxy"):
                summary[f"{way}_growth"] = _median(list(_growth(results, way)))
        summary["met"] = row.check(summary) if row.check else None
        rows.append(summary)
    return rows


def _label(template: str, sizes: Dict) -> str:
    derived = dict(sizes, bulk_kib=sizes.get("bulk_size", 0) // 1024, big_mib=sizes.get("big_size", 0) // 2 ** 20,
                   smtp_kib=sizes.get("smtp_size", 0) // 1024, pop3_mib=sizes.get("pop3_size", 0) // 2 ** 20)
    try:
        return template.format(**derived)
    except (KeyError, ValueError):
        return template


def _growth(results, way):
    for run in results.get("scenarios", {}).get("hold", []):
        f = run.get(way) or {}
        if f.get("idle_noop_median_ms") and f.get("loaded_noop_median_ms"):
            yield f["loaded_noop_median_ms"] / f["idle_noop_median_ms"]


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{value:.0f}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _verdict(row) -> str:
    if not row["target"]:
        return ""
    met = {True: "met", False: "MISSED", None: "?"}[row["met"]]
    extra = ""
    if row.get("relay_growth") is not None:
        extra = f" (relay x{row['relay_growth']:.2f}, direct x{row.get('direct_growth') or 0:.2f})"
    if row.get("added") is not None and "added" in row["target"]:
        extra = f" (added {row['added']:+.3f} ms)" if row["digits"] >= 3 else f" (added {row['added']:+.1f} ms)"
    return f"{row['target']}: {met}{extra}"


def table(summary: List[Dict]) -> str:
    header = ("scenario", "metric", "direct", "relay", "emailproxy", "relay/direct", "relay/eproxy", "target")
    lines = [header]
    for row in summary:
        v, d = row["values"], row["digits"]
        lines.append((row["scenario"], row["metric"], _fmt(v["direct"], d), _fmt(v["relay"], d),
                      _fmt(v["emailproxy"], d), _fmt(row["ratio_direct"], 2), _fmt(row["ratio_emailproxy"], 2),
                      _verdict(row)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i < 2 or i == 7 else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(summary: List[Dict]) -> str:
    out = ["| scenario | metric | direct | relay | emailproxy | relay/direct | relay/emailproxy | target |",
           "|---|---|--:|--:|--:|--:|--:|---|"]
    for row in summary:
        v, d = row["values"], row["digits"]
        out.append(f"| {row['scenario']} | {row['metric']} | {_fmt(v['direct'], d)} | {_fmt(v['relay'], d)} | "
                   f"{_fmt(v['emailproxy'], d)} | {_fmt(row['ratio_direct'], 2)} | "
                   f"{_fmt(row['ratio_emailproxy'], 2)} | {_verdict(row)} |")
    return "\n".join(out)


def one_line(name: str, figures: Dict) -> str:
    """A progress line per scenario and run, for the console."""
    parts = []
    for way in WAYS:
        f = figures.get(way)
        if f is None:
            continue
        if "error" in f:
            parts.append(f"{way} ERROR")
        elif name == "bulk":
            parts.append(f"{way} {f['small_mb_s']:.0f}/{f['big_mb_s']:.0f} MB/s")
        elif name == "noop":
            parts.append(f"{way} {f['median_ms']:.3f}/{f['p99_ms']:.3f} ms")
        elif name == "login":
            s, p = f["sequential"], f["parallel"]
            parts.append(f"{way} {_fmt(s['median_ms'])} ms, {p['logins_per_s']:.1f}/s, "
                         f"{s['failures'] + p['failures']} failed")
        elif name == "smtp":
            parts.append(f"{way} {f['messages_per_s']:.1f} msg/s {f['delivered']}/{f['accepted']} delivered")
        elif name == "pop3":
            parts.append(f"{way} {f['mb_s']:.0f} MB/s")
        elif name == "hold":
            parts.append(f"{way} {f['held']} held, {_fmt(f['kib_per_session'])} KiB/session, NOOP "
                         f"{f['idle_noop_median_ms']:.3f}->{_fmt(f['loaded_noop_median_ms'], 3)} ms "
                         f"(spread {_fmt(f.get('spread_noop_median_ms'), 3)})")
    return "; ".join(parts)


def markdown(results: Dict, summary: List[Dict], analysis: Path) -> str:
    m = results["machine"]
    sizes = results["sizes"]
    when = results.get("finished") or time.strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        "# OAuth Relay benchmarks",
        "",
        f"Generated by `{results.get('command', 'bench/run')}` on {when}; the whole run took "
        f"{results['seconds'] / 60:.1f} min ({results.get('setup_seconds', 0):.0f} s of it setting up). "
        f"{'**Quick mode: small sizes, one run; not the reference numbers.**' if results.get('quick') else ''}",
        "",
        "## Machine",
        "",
        f"- {m['cores']} cores, {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']}",
        f"- Python {m['python']}, gevent {m['gevent']}, {m['openssl']}",
        f"- Dovecot {m['dovecot']}, Postfix {m['postfix']}, emailproxy "
        f"{(m.get('emailproxy') or '?').split()[0]} (PyPI, own venv under bench/.work/ on Python "
        f"{(m.get('emailproxy') or '? ?').split()[-1]})",
        "",
        "## Results",
        "",
        "Each figure is the median over runs (" + ", ".join(
            f"{name} {sizes[name + '_runs']}" for name in ("bulk", "noop", "login", "smtp", "pop3", "hold"))
        + "); in every run the three ways are measured back to back, the first one rotating. Ratios are "
        "the median of the per-run ratios. Throughput is message data in 10^6 bytes per second; latencies "
        "are wall-clock times seen by the client; \"added\" is relay minus direct, per run. Load average "
        f"of the machine at the start {results['load']['start'][0]:.1f}, at the end "
        f"{results['load']['end'][0]:.1f} (2 cores; other jobs ran on it too).",
        "",
        markdown_table(summary),
        "",
        "Per run (direct / relay / emailproxy):",
        "",
    ]
    for row in summary:
        runs = " · ".join("/".join(_fmt(row["per_run"][w][i], row["digits"]) for w in WAYS)
                          for i in range(len(row["per_run"]["direct"])))
        lines.append(f"- {row['scenario']}, {row['metric']}: {runs}")
    notes = _notes(results)
    if notes:
        lines += ["", "## Notes from this run", ""] + notes
    if analysis.exists():
        lines += ["", analysis.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def _notes(results: Dict) -> List[str]:
    notes = []
    for section, runs in results.get("scenarios", {}).items():
        for run in runs:
            for way, f in run.items():
                if not isinstance(f, dict):
                    continue
                if "error" in f:
                    notes.append(f"- run {run['run']}, {section}, {way}: error `{f['error']}`")
                errors = f.get("errors") or {}
                for part in ("sequential", "parallel"):
                    errors = {**errors, **((f.get(part) or {}).get("errors") or {})}
                if errors:
                    shown = "; ".join(f"{k} (x{v})" for k, v in list(errors.items())[:3])
                    notes.append(f"- run {run['run']}, {section}, {way}: {shown}")
                if section == "hold" and f.get("held") is not None and f["held"] < f.get("wanted", 0):
                    notes.append(f"- run {run['run']}, hold, {way}: held {f['held']} of {f['wanted']} sessions "
                                 f"within the time limit ({f.get('open_seconds', 0):.0f} s of opening)")
                if section == "login":
                    for part in ("sequential", "parallel"):
                        p = f.get(part) or {}
                        if p.get("done") is not None and p["done"] + p.get("failures", 0) < p.get("wanted", 0):
                            notes.append(f"- run {run['run']}, login {part}, {way}: {p['done']} of {p['wanted']} "
                                         "logins within the time limit")
    return notes
