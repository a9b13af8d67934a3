"""The three ways to one mailbox: direct to the bed, through oauth-relay, through emailproxy.

Everything here reuses the test bed (tests/bed) and the relay harness (tests/e2e/harness.py):
the same Dovecot and Postfix on 127.0.0.2, the same identity provider.
"""

from __future__ import annotations

import os
import resource
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from bench import eproxy
from bench.clients import Imap, Pop3
from tests.bed import Bed, Xoauth2
from tests.e2e.harness import Relay

WAYS = ("direct", "relay", "emailproxy")
LOCAL_PASSWORD = "bench local password 1"
EHLO_NAME = "bench.example.test"
MAX_CONNECTIONS = 1200          # Dovecot/Postfix limits of the bench's bed (1,000 sessions + margin)
SESSIONS_PER_MAILBOX = 1100     # the relay's per-mailbox cap (Office 365's is ~20)


def raise_fd_limit(wanted: int = 65536) -> int:
    """1,000 sessions need ~2,000 descriptors in the relay worker; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Account:
    address: str
    token: str              # a warm token for the direct column
    local_name: str         # the relay's local user
    local_password: str


class Way:
    """How a client reaches one protocol's server and logs in, in one of the three columns."""

    def __init__(self, name: str, env: "Environment"):
        self.name, self.env = name, env
        bed = env.bed
        if name == "direct":
            self.host, self.hostname = bed.upstream_host, bed.upstream_host
            self.ports = {"imap": bed.imaps_port, "pop3": bed.pop3s_port, "smtp": bed.smtp_port}
        elif name == "floor":        # bench/floor.py, a bare forwarder (profiling only)
            self.host, self.hostname = "127.0.0.1", "127.0.0.1"
            self.ports = {"imap": env.floor_port}
        elif name == "relay":
            self.host, self.hostname = "127.0.0.1", "127.0.0.1"
            self.ports = {"imap": env.relay.ports["imap-tls"], "pop3": env.relay.ports["pop3-tls"],
                          "smtp": env.relay.ports["smtp-tls"]}
        else:
            self.host, self.hostname = "127.0.0.1", "127.0.0.1"
            self.ports = dict(env.emailproxy.ports)
        self.context = bed.ssl_context()

    def address(self, protocol: str):
        return self.host, self.ports[protocol]

    def credentials(self, account: Account):
        """(user, secret, kind): kind 'xoauth2' for direct, else a password login."""
        if self.name in ("direct", "floor"):
            return account.address, account.token, "xoauth2"
        if self.name == "relay":
            return account.local_name, account.local_password, "password"
        return account.address, eproxy.PASSWORD, "password"

    # -- IMAP / POP3 --------------------------------------------------------------------------
    def imap_connect(self, timeout: float = 60.0) -> Imap:
        return Imap(self.address("imap"), self.context, self.hostname, timeout)

    def imap_auth(self, conn: Imap, account: Account) -> None:
        user, secret, kind = self.credentials(account)
        if kind == "xoauth2":
            conn.xoauth2(user, secret)
        else:
            conn.login(user, secret)

    def imap(self, account: Account, timeout: float = 60.0) -> Imap:
        conn = self.imap_connect(timeout)
        try:
            self.imap_auth(conn, account)
        except BaseException:
            conn.close()
            raise
        return conn

    def pop3(self, account: Account, timeout: float = 60.0) -> Pop3:
        conn = Pop3(self.address("pop3"), self.context, self.hostname, timeout)
        try:
            user, secret, kind = self.credentials(account)
            if kind == "xoauth2":
                conn.xoauth2(user, secret)
            else:
                conn.login(user, secret)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- SMTP ---------------------------------------------------------------------------------
    def smtp(self, account: Account, timeout: float = 60.0) -> smtplib.SMTP:
        user, secret, kind = self.credentials(account)
        host, port = self.address("smtp")
        if self.name == "direct":   # the bed's Postfix offers submission with STARTTLS only
            conn = smtplib.SMTP(host, port, local_hostname=EHLO_NAME, timeout=timeout)
            conn.starttls(context=self.context)
            conn.ehlo(EHLO_NAME)
        else:                       # relay and emailproxy: their implicit-TLS listeners
            conn = smtplib.SMTP_SSL(host, port, local_hostname=EHLO_NAME, timeout=timeout, context=self.context)
            conn.ehlo(EHLO_NAME)
        try:
            if kind == "xoauth2":
                conn.auth("XOAUTH2", Xoauth2(user, secret), initial_response_ok=True)
            else:
                conn.login(user, secret)
        except BaseException:
            conn.close()
            raise
        return conn


class Environment:
    def __init__(self, work: Path, log=print):
        self.work, self.log = work, log
        self.bed: Optional[Bed] = None
        self.relay: Optional[Relay] = None
        self.emailproxy: Optional[eproxy.EmailProxy] = None
        self.ways: Dict[str, Way] = {}
        self.accounts: Dict[str, Account] = {}
        self.emailproxy_python: Optional[Path] = None

    def start(self, account_names: List[str]) -> "Environment":
        started = time.monotonic()
        self.fd_limit = raise_fd_limit()
        self.emailproxy_python = eproxy.ensure_installed(self.work, self.log)
        self.bed = Bed(max_connections=MAX_CONNECTIONS)
        self.bed.start()
        self.log(f"test bed up (Dovecot/Postfix on {self.bed.upstream_host}, IdP {self.bed.idp.base_url})")
        # The relay's and emailproxy's files (configs, journals, logs) stay after the run for a look.
        root = self.work / "last-run"
        shutil.rmtree(root, ignore_errors=True)
        (root / "relay").mkdir(parents=True)
        self.relay = Relay(self.bed, root / "relay", limits={"sessions_per_mailbox": SESSIONS_PER_MAILBOX},
                           journal_level="info").start()
        self.emailproxy = eproxy.EmailProxy(self.bed, root / "emailproxy", self.emailproxy_python).start()
        for name in account_names:
            self.accounts[name] = self.new_account(name)
        self.ways = {name: Way(name, self) for name in WAYS}
        self.log(f"relay, emailproxy and {len(account_names)} accounts ready in {time.monotonic() - started:.1f} s")
        return self

    def new_account(self, prefix: str) -> Account:
        address = self.bed.new_account(prefix)
        user = self.relay.new_user(password=LOCAL_PASSWORD, account=address)
        return Account(address, self.bed.token_for(address), user.name, user.password)

    def relay_worker_pid(self, listener: str = "imap-tls") -> int:
        """The worker process serving one of the relay's listeners (a child of the master)."""
        port = self.relay.ports[listener]
        wanted = f"127.0.0.1:{port}"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if b"relay.worker" in argv and ppid == self.relay.process.pid and \
                    any(arg.decode(errors="replace").endswith(wanted) for arg in argv):
                return int(entry)
        raise RuntimeError(f"no relay worker for {listener} ({wanted})")

    def start_floor(self) -> Way:
        """bench/floor.py in front of Dovecot's IMAPS (for bench/profile.py)."""
        from tests.support import free_port
        cert, key = self.bed.issue_cert(str(self.work / "last-run" / "floor"))
        self.floor_port = free_port()
        self.floor = subprocess.Popen([sys.executable, "-m", "bench.floor", str(self.floor_port), cert, key,
                                       self.bed.upstream_host, str(self.bed.imaps_port), self.bed.ca_file],
                                      cwd=str(Path(__file__).resolve().parents[1]), stdout=subprocess.PIPE,
                                      text=True)
        assert self.floor.stdout.readline().strip() == "ready"
        self.ways["floor"] = Way("floor", self)
        return self.ways["floor"]

    def restart_relay(self) -> None:
        self.relay.stop()
        self.relay.start()

    def close(self) -> None:
        if getattr(self, "floor", None) is not None:
            self.floor.kill()
            self.floor.wait()
        for stop in ((self.emailproxy.stop if self.emailproxy else None),
                     (self.relay.stop if self.relay else None),
                     (self.bed.close if self.bed else None)):
            if stop:
                try:
                    stop()
                except Exception as exc:  # keep closing the rest
                    self.log(f"while closing: {exc!r}")


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc (KiB)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def ssl_versions() -> str:
    return ssl.OPENSSL_VERSION
