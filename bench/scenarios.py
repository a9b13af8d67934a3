"""The six scenarios of issue 9. Each function measures one way once and returns its figures.

Every loop is bounded in count and in time. Times are wall clock (perf_counter) on the
client; throughput is message data (10^6 bytes) per second of the measured command(s).
"""

from __future__ import annotations

import base64
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Dict, List, Optional

from bench.clients import ProtocolError, now, percentile
from bench.env import Account, Environment, Way, rss_kib

MB = 1e6


# -- mailbox content -------------------------------------------------------------------------
def message(size: int, seq: int, tag: str, sender: str = "bench@example.test",
            recipient: str = "bench@example.test") -> bytes:
    """An RFC 5322 message of about `size` bytes (CRLF), random base64 body lines."""
    head = (f"From: {sender}\r\nTo: {recipient}\r\nSubject: bench {tag} {seq}\r\n"
            f"Message-ID: <{tag}.{seq}.{uuid.uuid4().hex}@bench.example.test>\r\n"
            f"X-Bench: {tag}-{seq}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    rng = random.Random(seq * 7919 + len(tag))
    lines = (size - len(head)) // 78 + 1
    raw = rng.randbytes(lines * 57)
    body = b"\r\n".join(base64.b64encode(raw[i * 57:(i + 1) * 57]) for i in range(lines)) + b"\r\n"
    return head + body


def fill_mailbox(env: Environment, account: Account, sizes: List[int], tag: str) -> None:
    """Put the messages into the account's INBOX once, with IMAP APPEND straight to Dovecot."""
    conn = env.ways["direct"].imap(account)
    try:
        have = conn.ok(b"SELECT INBOX")
        for seq, size in enumerate(sizes, 1):
            data = message(size, seq, tag, account.address, account.address)
            reply, _ = conn.command(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
            if b" OK" not in reply:
                raise ProtocolError(f"APPEND: {reply[:200]!r}")
        del have
    finally:
        conn.logout()


# -- CPU accounting (what each process spends per GB moved) ----------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int, children: bool = False) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15 if children else 13]) / TICKS


def _children(parent: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


class CpuMeter:
    """CPU seconds of the client thread, the proxy under test and Dovecot (master, its live
    children, and the per-session processes it has reaped) between start() and stop()."""

    def __init__(self, env: Environment, way: Way, listener: str):
        self.master = env.bed.dovecot._proc.pid
        self.proxy = {"relay": lambda: env.relay_worker_pid(listener),
                      "emailproxy": lambda: env.emailproxy.pid}.get(way.name, lambda: None)()

    def _sample(self):
        dovecot = _cpu(self.master, children=True) + sum(_cpu(pid) for pid in _children(self.master))
        return time.thread_time(), (_cpu(self.proxy) if self.proxy else 0.0), dovecot

    def start(self) -> "CpuMeter":
        self.before = self._sample()
        return self

    def stop(self, moved_bytes: int) -> Dict:
        time.sleep(0.3)   # let Dovecot's master reap the session's process (its CPU moves to cutime)
        after = self._sample()
        gb = moved_bytes / 1e9
        client, proxy, dovecot = ((b - a) / gb for a, b in zip(self.before, after))
        return {"client_cpu_s_per_gb": client, "proxy_cpu_s_per_gb": proxy if self.proxy else None,
                "dovecot_cpu_s_per_gb": dovecot, "total_cpu_s_per_gb": client + proxy + dovecot}


# -- 1. IMAP bulk download -------------------------------------------------------------------
def imap_bulk(way: Way, account: Account, small: int, env: Optional[Environment] = None) -> Dict:
    meter = CpuMeter(env, way, "imap-tls") if env else None
    conn = way.imap(account)
    try:
        conn.ok(b"SELECT INBOX")
        if meter:   # after the login: emailproxy's costs ~0.3 s of CPU (PBKDF2), not per byte
            meter.start()
        started = now()
        small_bytes = conn.ok(b"FETCH 1:%d BODY.PEEK[]" % small) if small else 0
        middle = now()
        big_bytes = conn.ok(b"FETCH %d BODY.PEEK[]" % (small + 1))
        ended = now()
    finally:
        conn.logout()
    figures = {"small_mb_s": small_bytes / MB / (middle - started) if small else None, "small_bytes": small_bytes,
               "big_mb_s": big_bytes / MB / (ended - middle), "big_bytes": big_bytes}
    if meter:
        figures.update(meter.stop(small_bytes + big_bytes))
    return figures


# -- 2. IMAP round trip ----------------------------------------------------------------------
def imap_noop(way: Way, account: Account, count: int) -> Dict:
    conn = way.imap(account)
    try:
        conn.ok(b"SELECT INBOX")
        for _ in range(min(200, count)):
            conn.ok(b"NOOP")
        latencies = []
        deadline = time.monotonic() + 60
        for _ in range(count):
            started = now()
            conn.ok(b"NOOP")
            latencies.append(now() - started)
            if time.monotonic() > deadline:
                break
        tls = conn.tls_info()
    finally:
        conn.logout()
    return {"median_ms": statistics.median(latencies) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
            "count": len(latencies), "tls": tls}


# -- 3. logins -------------------------------------------------------------------------------
def _login_once(way: Way, account: Account) -> float:
    started = now()
    conn = way.imap_connect(timeout=30)
    try:
        way.imap_auth(conn, account)
        conn.ok(b"SELECT INBOX")
        conn.command(b"LOGOUT")
    finally:
        conn.close()
    return now() - started


def imap_logins_sequential(way: Way, account: Account, count: int, time_limit: float) -> Dict:
    _login_once(way, account)   # warm: token fetched, password hashed once, caches filled
    latencies, failures, errors = [], 0, {}
    deadline = time.monotonic() + time_limit
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            latencies.append(_login_once(way, account))
        except Exception as exc:
            failures += 1
            errors[f"{type(exc).__name__}: {exc}"[:120]] = errors.get(f"{type(exc).__name__}: {exc}"[:120], 0) + 1
    return _login_figures(latencies, failures, errors, count)


def imap_logins_parallel(way: Way, account: Account, clients: int, each: int, time_limit: float) -> Dict:
    _login_once(way, account)
    latencies: List[float] = []
    failures = [0]
    errors: Dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit
    barrier = threading.Barrier(clients + 1)

    def client():
        barrier.wait()
        for _ in range(each):
            if time.monotonic() > deadline:
                return
            try:
                seconds = _login_once(way, account)
            except Exception as exc:
                key = f"{type(exc).__name__}: {exc}"[:120]
                with lock:
                    failures[0] += 1
                    errors[key] = errors.get(key, 0) + 1
                continue
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = now()
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic() + 35))
    wall = now() - started
    figures = _login_figures(latencies, failures[0], errors, clients * each)
    figures["logins_per_s"] = len(latencies) / wall
    return figures


def _login_figures(latencies, failures, errors, wanted) -> Dict:
    return {"median_ms": statistics.median(latencies) * 1e3 if latencies else None,
            "p99_ms": percentile(latencies, 0.99) * 1e3 if latencies else None,
            "done": len(latencies), "wanted": wanted, "failures": failures, "errors": errors}


# -- 4. SMTP ---------------------------------------------------------------------------------
def smtp_send(env: Environment, way: Way, sender: Account, messages: int, sessions: int, size: int,
              time_limit: float) -> Dict:
    recipient = env.bed.new_account("rcpt")
    tag = uuid.uuid4().hex[:10]
    per_session = messages // sessions
    bodies = [message(size, seq, tag, sender.address, recipient) for seq in range(per_session * sessions)]
    accepted, failures, errors = [0], [0], {}
    lock = threading.Lock()
    barrier = threading.Barrier(sessions + 1)
    deadline = time.monotonic() + time_limit

    def session(index: int):
        try:
            conn = way.smtp(sender)
        except Exception as exc:
            barrier.wait()
            with lock:
                failures[0] += per_session
                errors[f"login: {exc}"[:120]] = 1
            return
        barrier.wait()
        try:
            for seq in range(index * per_session, (index + 1) * per_session):
                if time.monotonic() > deadline:
                    break
                try:
                    refused = conn.sendmail(sender.address, [recipient], bodies[seq])
                    ok = not refused
                except Exception as exc:
                    ok = False
                    with lock:
                        errors[f"{type(exc).__name__}: {exc}"[:120]] = 1
                with lock:
                    accepted[0] += ok
                    failures[0] += not ok
        finally:
            try:
                conn.quit()
            except Exception:
                conn.close()

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = now()
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic() + 30))
    seconds = now() - started
    # Every accepted message must arrive: count the markers in the recipient's maildir.
    delivered_started = now()
    stored = env.bed.wait_for_delivery(recipient, accepted[0], timeout=max(30.0, accepted[0] / 10))
    markers = {line.split(b": ", 1)[1].strip() for data in stored for line in data.split(b"\n", 12)
               if line.startswith(b"X-Bench: ")}
    expected = {f"{tag}-{seq}".encode() for seq in range(per_session * sessions)}
    delivered = len(markers & expected)
    return {"messages_per_s": accepted[0] / seconds, "accepted": accepted[0], "delivered": delivered,
            "failures": failures[0], "errors": errors, "seconds": seconds,
            "delivery_wait_s": now() - delivered_started}


# -- 5. POP3 ---------------------------------------------------------------------------------
def pop3_retr(way: Way, account: Account, count: int, env: Optional[Environment] = None) -> Dict:
    meter = CpuMeter(env, way, "pop3-tls") if env else None
    conn = _pop3_with_retry(way, account)
    try:
        messages, _ = conn.stat()
        if meter:
            meter.start()
        total = 0
        started = now()
        for number in range(1, min(count, messages) + 1):
            total += conn.retr(number)
        seconds = now() - started
    finally:
        conn.quit()
    figures = {"mb_s": total / MB / seconds, "bytes": total, "messages": min(count, messages)}
    if meter:
        figures.update(meter.stop(total))
    return figures


def _pop3_with_retry(way: Way, account: Account):
    # Dovecot locks a POP3 mailbox; the previous way's session may still be ending.
    deadline = time.monotonic() + 10
    while True:
        try:
            return way.pop3(account)
        except ProtocolError as exc:
            if "IN-USE" not in str(exc).upper() and "in use" not in str(exc).lower() \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- 6. many sessions ------------------------------------------------------------------------
def imap_hold(env: Environment, way: Way, account: Account, total: int, warm: int, noops: int,
              time_limit: float) -> Dict:
    user, secret, kind = way.credentials(account)
    host, port = way.address("imap")
    spec = {"host": host, "port": port, "hostname": way.hostname, "ca_file": env.bed.ca_file, "user": user,
            "secret": secret, "kind": kind, "total": total, "warm": warm, "noops": noops,
            "concurrency": 20, "timeout": 60, "time_limit": time_limit}
    pid = {"relay": env.relay_worker_pid, "emailproxy": lambda: env.emailproxy.pid}.get(way.name)
    pid = pid() if pid else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-m", "bench.hold"], cwd=root, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: Dict = {}

    def ask(command=None, expect=None):
        if command is not None:
            process.stdin.write(command + "\n")
            process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("bench.hold ended: " + process.stderr.read()[-2000:])
        answer = json.loads(line)
        if answer.get("event") == "error" or (expect and answer.get("event") != expect):
            raise RuntimeError(f"bench.hold: {answer}")
        return answer

    try:
        warm_answer = ask(json.dumps(spec), "warm")
        if not warm_answer["opened"]:
            raise RuntimeError(f"no session opened: {warm_answer['errors']}")
        time.sleep(1.0)
        before = rss_kib(pid) if pid else None
        held = ask("grow", "held")
        time.sleep(2.0)   # let the allocator settle
        after = rss_kib(pid) if pid else None
        loaded = ask("noop", "loaded")
        idle_lat, loaded_lat, spread_lat = warm_answer["latencies"], loaded["latencies"], loaded["spread"]
        result = {
            "held": held["opened"], "wanted": total, "failed": held["failed"], "errors": held["errors"],
            "open_seconds": held["seconds"],
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": ((after - before) / (held["opened"] - warm_answer["opened"])
                                if pid and held["opened"] > warm_answer["opened"] else None),
            "idle_noop_median_ms": statistics.median(idle_lat) * 1e3,
            "idle_noop_p99_ms": percentile(idle_lat, 0.99) * 1e3,
            "loaded_noop_median_ms": statistics.median(loaded_lat) * 1e3 if loaded_lat else None,
            "loaded_noop_p99_ms": percentile(loaded_lat, 0.99) * 1e3 if loaded_lat else None,
            "spread_noop_median_ms": statistics.median(spread_lat) * 1e3 if spread_lat else None,
            "spread_noop_p99_ms": percentile(spread_lat, 0.99) * 1e3 if spread_lat else None,
            "noop_failures": loaded["failed"],
        }
        ask("close", "closed")
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return result


def wait_for_upstream_sessions_to_end(env: Environment, timeout: float = 60.0) -> int:
    """Dovecot forks one imap process per session: wait until the held ones are gone."""
    master = env.bed.dovecot._proc.pid
    deadline = time.monotonic() + timeout
    while True:
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                if int(fields[1]) != master:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    name = handle.read().split(b"\0", 1)[0]
            except (OSError, ValueError, IndexError):
                continue
            if name.startswith(b"dovecot/imap") and not name.startswith(b"dovecot/imap-"):
                count += 1
        if count <= 5 or time.monotonic() > deadline:
            return count
        time.sleep(0.25)
