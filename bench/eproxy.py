"""email-oauth2-proxy (PyPI `emailproxy`) as the third column: installed, configured, run.

It is installed into its own virtual environment under bench/.work/ (git-ignored) with pip,
never vendored. It runs headless (`--no-gui`) with `oauth2_flow = password` (ROPC): a client
logs in with the mailbox address and the bed's password, emailproxy asks the bed's identity
provider for a token with them once, then keeps it (encrypted with that password) in its
config file. TLS on every hop: implicit TLS towards the client with a bed certificate, IMAPS /
POP3S / SMTP STARTTLS towards Dovecot and Postfix, verified against the bed CA
(SSL_CERT_FILE, which Python's default context honours).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from tests.support import free_port, wait_for

VERSION = "2026.7.3"
PASSWORD = "bed-password"     # the bed IdP's ROPC password; emailproxy forwards the client's
SCOPES = ("https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All "
          "https://outlook.office.com/SMTP.Send offline_access")


def ensure_installed(work: Path, log=print) -> Path:
    """The venv's python with emailproxy==VERSION in it (made once, reused afterwards)."""
    venv = work / "emailproxy-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv} for emailproxy {VERSION}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('emailproxy'))"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != VERSION:
        log(f"installing emailproxy=={VERSION} with pip into {venv}")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"emailproxy=={VERSION}"], check=True)
    return python


def version_of(python: Path) -> str:
    probe = subprocess.run([str(python), "-c", "import sys, importlib.metadata as m; "
                            "print(m.version('emailproxy'), sys.version.split()[0])"],
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip()


class EmailProxy:
    def __init__(self, bed, root: Path, python: Path):
        self.bed, self.root, self.python = bed, root, python
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "emailproxy.config"
        self.log_file = root / "emailproxy.log"
        self.ports: Dict[str, int] = {"imap": free_port(), "pop3": free_port(), "smtp": free_port()}
        self.client_id = bed.idp.register_app(type="public")
        self.process: Optional[subprocess.Popen] = None
        self._write_config()

    def _write_config(self) -> None:
        cert, key = self.bed.issue_cert(str(self.root / "certs"))
        bed = self.bed
        local = f"local_address = 127.0.0.1\nlocal_certificate_path = {cert}\nlocal_key_path = {key}\n"
        self.config.write_text(f"""\
[IMAP-{self.ports['imap']}]
server_address = {bed.upstream_host}
server_port = {bed.imaps_port}
{local}
[POP-{self.ports['pop3']}]
server_address = {bed.upstream_host}
server_port = {bed.pop3s_port}
{local}
[SMTP-{self.ports['smtp']}]
server_address = {bed.upstream_host}
server_port = {bed.smtp_port}
server_starttls = True
{local}
[@{bed.mail_domain}]
token_url = {bed.idp.token_endpoint()}
oauth2_scope = {SCOPES}
oauth2_flow = password
client_id = {self.client_id}

[emailproxy]
allow_catch_all_accounts = True
delete_account_token_on_password_error = False
""")

    def start(self) -> "EmailProxy":
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        env["SSL_CERT_FILE"] = self.bed.ca_file
        env.pop("SSL_CERT_DIR", None)
        with open(self.root / "emailproxy.stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                [str(self.python), "-m", "emailproxy", "--no-gui", "--config-file", str(self.config),
                 "--log-file", str(self.log_file)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)
        for name, port in self.ports.items():
            wait_for(lambda: self._greets(port), 30, f"emailproxy's {name} listener on {port}")
        return self

    def _greets(self, port: int) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"emailproxy exited with {self.process.returncode}:\n"
                                 + (self.root / "emailproxy.stderr").read_text(errors="replace")[-3000:]
                                 + self.log_text()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.bed.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    return bool(sock.recv(1))
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def restart(self) -> "EmailProxy":
        self.stop()
        time.sleep(0.2)
        return self.start()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
