"""README command 1: the installed `oauth-relay serve` on the shipped conf/relay.yaml.

Only what a test machine needs is changed in a copy of the file: the six ports (the standard
ones need root and may be taken), state_dir and runtime_dir, and an `upstream:` section that
points the Office 365 hosts at a closed loopback port (the workers' start-up probes would
otherwise look up outlook.office365.com: tests stay on loopback). Everything else stays as
shipped: the journal to stderr, `tls: auto`, no apps, the example users file.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from tests.process.helpers import PROTOCOL_GREETINGS, read_line, wait_for
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
# The console script `pip install` made, beside this Python: the one README's command runs.
CONSOLE_SCRIPT = Path(sys.executable).with_name("oauth-relay")
LISTEN = re.compile(r'(\{protocol: (\w+), listen: "127\.0\.0\.1:)(\d+)(", security: (\w+)\})')


def shipped_copy(directory: Path):
    """conf/relay.yaml and conf/users.yaml copied into `directory`, ports and dirs rewritten."""
    shipped = (REPO / "conf" / "relay.yaml").read_text()
    listeners = []

    def new_port(match):
        port = free_port()
        listeners.append((match.group(2), port, match.group(5)))
        return f"{match.group(1)}{port}{match.group(4)}"

    text = LISTEN.sub(new_port, shipped)
    text = re.sub(r"(?m)^state_dir: /var/lib/oauth-relay$", f"state_dir: {directory / 'state'}", text)
    text = re.sub(r"(?m)^runtime_dir: /run/oauth-relay$", f"runtime_dir: {directory / 'run'}", text)
    closed = free_port()
    upstream = "".join(f"  {protocol}: {{host: 127.0.0.1, port: {closed}, security: {security}}}\n"
                       for protocol, security in (("imap", "tls"), ("pop3", "tls"), ("smtp", "starttls")))
    text += "upstream:\n" + upstream
    changed = [line for line in difflib.ndiff(shipped.splitlines(), text.splitlines()) if line[:1] in "-+"]
    assert len(changed) == 2 * (len(listeners) + 2) + 4, changed   # nothing else touched
    assert sorted(protocol for protocol, _port, _security in listeners) == ["imap", "imap", "pop3", "pop3",
                                                                          "smtp", "smtp"]
    assert "\ntls: auto\n" in text
    (directory / "relay.yaml").write_text(text)
    shutil.copy(REPO / "conf" / "users.yaml", directory / "users.yaml")
    return directory / "relay.yaml", listeners


def greeting(port: int, implicit_tls: bool, cafile: Path) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.settimeout(5)
        if not implicit_tls:
            return read_line(raw)
        context = ssl.create_default_context(cafile=str(cafile))      # the self-signed one
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            return read_line(sock)


def test_the_installed_command_serves_the_shipped_config(short_dir):
    config, listeners = shipped_copy(short_dir)
    assert CONSOLE_SCRIPT.exists(), f"no console script {CONSOLE_SCRIPT}: pip install the package"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NOTIFY_SOCKET", "OAUTH_RELAY_CONFIG", "PYTHONPATH")}
    with open(short_dir / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen([str(CONSOLE_SCRIPT), "serve", "--config", str(config)], cwd=str(short_dir),
                                env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    journal = lambda: (short_dir / "stderr.txt").read_text(errors="replace")   # noqa: E731
    try:
        def serving():
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{journal()}"
            return journal().count(" worker_serving ") == 6
        wait_for(serving, 30, what="six workers to serve")

        # The first lines say what it listens on and where its state lives.
        names = [f"{protocol}@127.0.0.1:{port}" for protocol, port, _security in listeners]
        first = journal().splitlines()[:7]
        assert " relay_starting " in first[0], first
        assert f" state_dir={short_dir / 'state'} " in first[0] + " ", first[0]
        assert f'listeners="{" ".join(names)}"' in first[0], first[0]
        for line, name, (_protocol, _port, security) in zip(first[1:], names, listeners):
            assert " listening " in line and f" listener={name} security={security} " in line, first

        cafile = short_dir / "state" / "tls" / "relay.crt"           # tls: auto made it
        for protocol, port, security in listeners:
            line = greeting(port, security == "tls", cafile)
            assert line.startswith(PROTOCOL_GREETINGS[protocol]), (protocol, port, security, line)
        assert (short_dir / "run" / "relay.pid").read_text().strip() == str(proc.pid)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
