"""A real `oauth-relay serve` in front of the test bed, driven as an admin would drive it.

Users are added with `oauth-relay user add`, accounts signed in with `oauth-relay login`
(device code, approved through the identity provider's test control), and the relay picks
both up by itself: the users file by hot reload, the tokens from the shared store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Optional, Sequence

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
LISTENERS = (("imap", "starttls"), ("imap", "tls"), ("pop3", "starttls"), ("pop3", "tls"),
             ("smtp", "starttls"), ("smtp", "tls"))
# Every character a legacy program's password might hold.
AWKWARD_PASSWORD = 'p a"s\\s %* ü€'


class Relay:
    __test__ = False

    def __init__(self, bed, root: Path, extra_yaml: str = "", limits: Optional[Dict[str, float]] = None,
                 journal_level: str = "full-debug", auth: Optional[Dict[str, object]] = None):
        self.bed = bed
        self.root = root
        self.config = root / "relay.yaml"
        self.journal = root / "relay.log"
        self.ports: Dict[str, int] = {f"{p}-{s}": free_port() for p, s in LISTENERS}
        self.client_id = bed.idp.register_app(type="public")
        self.process: Optional[subprocess.Popen] = None
        self.journal_level = journal_level   # benchmarks run at info: full-debug logs every byte
        # `limits` overrides single keys of the config's limits mapping (extra_yaml cannot:
        # it appends keys, and a second `limits:` would be a duplicate).
        self.limits = {"preauth_timeout": 20, **(limits or {})}
        # `auth` overrides single keys of the auth mapping, e.g. {"plaintext_from": "[]"}.
        self.auth = {"failure_delay": 0, "max_failures": 100000, **(auth or {})}
        self._write_config(extra_yaml)

    def _write_config(self, extra_yaml: str) -> None:
        cert, key = self.bed.issue_cert(str(self.root / "certs"))
        listeners = "".join(
            f"  - {{protocol: {p}, listen: '127.0.0.1:{self.ports[f'{p}-{s}']}', security: {s}}}\n"
            for p, s in LISTENERS)
        bed = self.bed
        self.config.write_text(f"""\
journal: {{level: {self.journal_level}, file: {self.journal}}}
state_dir: {self.root / 'state'}
runtime_dir: {self.root / 'run'}
users: users.yaml
tls: {{certificate: {cert}, key: {key}}}
upstream:
  imap: {{host: {bed.upstream_host}, port: {bed.imaps_port}, security: tls}}
  pop3: {{host: {bed.upstream_host}, port: {bed.pop3s_port}, security: tls}}
  smtp: {{host: {bed.upstream_host}, port: {bed.smtp_port}, security: starttls}}
  ca_file: {bed.ca_file}
  login_timeout: 15
apps:
  bed:
    client_id: {self.client_id}
    tenant: {bed.tenant}
    type: public
    flow: device_code
    authority: {bed.idp.authority()}
listeners:
{listeners}auth: {{{", ".join(f"{key}: {value}" for key, value in self.auth.items())}}}
limits: {{{", ".join(f"{key}: {value}" for key, value in self.limits.items())}}}
{extra_yaml}""")
        (self.root / "users.yaml").write_text("# users of the end-to-end tests\n")

    # ------------------------------------------------------------------ processes
    def cli(self, *args: str, stdin: Optional[str] = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(self.config)],
                              input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def start(self) -> "Relay":
        with open(self.root / "serve.stderr", "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        for name, port in self.ports.items():
            wait_for(lambda: self._greets(port, name.endswith("-tls")), 30, f"the {name} listener on {port}")
        return self

    def _greets(self, port: int, implicit_tls: bool) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"oauth-relay serve exited with {self.process.returncode}:\n"
                                 + (self.root / "serve.stderr").read_text() + self.journal_text()[-4000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                if not implicit_tls:
                    return bool(raw.recv(1))
                with self.bed.ssl_context().wrap_socket(raw, server_hostname="localhost") as sock:
                    return bool(sock.recv(1))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def journal_text(self) -> str:
        return self.journal.read_text(errors="replace") if self.journal.exists() else ""

    # ------------------------------------------------------------------ admin tasks
    def add_user(self, name: str, password: str, account: str, mailbox: Optional[str] = None,
                 protocols: Optional[Sequence[str]] = None) -> None:
        args = ["user", "add", name, "--account", account, "--password-stdin"]
        if mailbox:
            args += ["--mailbox", mailbox]
        if protocols:
            args += ["--protocols", ",".join(protocols)]
        before = self.journal_text().count("users_swapped")
        result = self.cli(*args, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        # Every worker swaps to the new mapping by itself (hot reload); wait for all of them.
        wait_for(lambda: self.journal_text().count("users_swapped") >= before + len(self.ports), 10,
                 "the workers to pick up users.yaml")

    def sign_in(self, account: str) -> None:
        login = subprocess.Popen([sys.executable, "-m", "relay", "login", account, "--flow", "device_code",
                                  "--no-browser", "--config", str(self.config)],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            code = self.bed.idp.wait_for_device_code(timeout=20)
            self.bed.idp.approve_device_code(code["user_code"], account)
            output, _ = login.communicate(timeout=60)
        finally:
            if login.poll() is None:
                login.kill()
                login.wait()
        assert login.returncode == 0, output

    def new_user(self, protocols: Optional[Sequence[str]] = None, password: str = AWKWARD_PASSWORD,
                 mailbox: Optional[str] = None, account: Optional[str] = None, sign_in: bool = True):
        """A fresh local user with its own Office 365 (Dovecot) account, signed in."""
        account = account or self.bed.new_account()
        name = f"local-{uuid.uuid4().hex[:8]}"
        if sign_in:
            self.sign_in(account)
        self.add_user(name, password, account, mailbox=mailbox, protocols=protocols)
        return LocalUser(name, password, account, mailbox)


class LocalUser:
    def __init__(self, name: str, password: str, account: str, mailbox: Optional[str]):
        self.name, self.password, self.account, self.mailbox = name, password, account, mailbox

    @property
    def target(self) -> str:
        return self.mailbox or self.account
