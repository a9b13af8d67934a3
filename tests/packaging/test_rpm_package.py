"""The .rpm: metadata, file list, modes and config flags, scripts, an install into a scratch
root (rpm --root, --noscripts: there is no EL9 userland here), and its wheelhouse turned
into the relay's environment by CPython 3.9 (EL9's), which then serves."""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.packaging,
              pytest.mark.skipif(shutil.which("rpm") is None, reason="needs rpm")]
UID = 995  # the service account in the scratch root's /etc/passwd


def rpm(*args, check=True):
    result = subprocess.run(["rpm", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"rpm {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def query(package, fmt):
    return rpm("-qp", "--qf", fmt, str(package))


def test_metadata(packages):
    assert query(packages["rpm"], "%{NAME} %{ARCH} %{LICENSE}") == "oauth-relay x86_64 MIT"
    requires = rpm("-qp", "--requires", str(packages["rpm"])).splitlines()
    assert {"python3 >= 3.9", "python3 < 3.10", "util-linux", "shadow-utils"} <= set(requires), requires


def test_file_list_modes_and_config_flags(packages):
    rows = query(packages["rpm"], "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} "
                                  "%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines()
    files = {}
    for row in rows:
        parts = row.split()
        path = parts[-1]
        files[path] = (parts[0], parts[1], parts[2] if len(parts) == 4 else "")
    expected = {
        "/etc/oauth-relay": ("drwxr-x---", "root:oauth-relay", ""),
        "/etc/oauth-relay/relay.yaml": ("-rw-r-----", "root:oauth-relay", "cn"),
        "/etc/oauth-relay/users.yaml": ("-rw-r-----", "root:oauth-relay", "cn"),
        "/etc/logrotate.d/oauth-relay": ("-rw-r--r--", "root:root", "cn"),
        "/var/lib/oauth-relay": ("drwx------", "oauth-relay:oauth-relay", ""),
        "/var/log/oauth-relay": ("drwxr-x---", "oauth-relay:oauth-relay", ""),
        "/usr/bin/oauth-relay": ("-rwxr-xr-x", "root:root", ""),
        "/usr/lib/systemd/system/oauth-relay.service": ("-rw-r--r--", "root:root", ""),
        "/usr/lib/systemd/system-preset/80-oauth-relay.preset": ("-rw-r--r--", "root:root", ""),
        "/usr/lib/sysusers.d/oauth-relay.conf": ("-rw-r--r--", "root:root", ""),
        "/usr/lib/tmpfiles.d/oauth-relay.conf": ("-rw-r--r--", "root:root", ""),
        "/opt/oauth-relay": ("drwxr-xr-x", "root:root", ""),
        "/opt/oauth-relay/libexec/oauth-relay-venv": ("-rwxr-xr-x", "root:root", ""),
        "/usr/share/man/man1/oauth-relay.1.gz": ("-rw-r--r--", "root:root", "d"),
        "/usr/share/licenses/oauth-relay/LICENSE": ("-rw-r--r--", "root:root", "l"),
    }
    wrong = {path: (files.get(path), want) for path, want in expected.items() if files.get(path) != want}
    assert not wrong, f"(have, want): {wrong}"
    wheels = [Path(path).name for path in files if path.endswith(".whl")]
    abis = {re.match(r"[^-]+-[^-]+-([^-]+)-", name).group(1) for name in wheels}
    assert abis <= {"py3", "py2.py3", "cp39"}, abis


def test_scripts(packages):
    scripts = rpm("-qp", "--scripts", str(packages["rpm"]))
    parts = dict(re.findall(r"(?ms)^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)", scripts))
    assert set(parts) == {"preinstall", "postinstall", "preuninstall", "postuninstall", "posttrans"}, set(parts)
    sysusers = [line for line in (REPO / "packaging/sysusers.conf").read_text().splitlines()
                if line and not line.startswith("#")][0]
    assert sysusers in parts["preinstall"] and "useradd --system" in parts["preinstall"]
    assert "oauth-relay-venv install" in parts["postinstall"]
    assert 'if [ "$1" -eq 1 ]' in parts["postinstall"] and "systemctl --no-reload preset" in parts["postinstall"]
    assert "systemctl --no-reload disable --now" in parts["preuninstall"]
    assert "try-restart" in parts["postuninstall"] and "rm -rf /opt/oauth-relay/venv" in parts["postuninstall"]
    assert "oauth-relay-venv prune" in parts["posttrans"]
    for name, text in parts.items():
        assert "#@" not in text and "@sysusers@" not in text, name
        subprocess.run(["sh", "-n", "-c", text], check=True)


@pytest.fixture(scope="module")
def scratch_root(packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("rpmroot")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\n"
                                     f"oauth-relay:x:{UID}:{UID}:OAuth Relay:/var/lib/oauth-relay:/sbin/nologin\n")
    (root / "etc/group").write_text(f"root:x:0:\noauth-relay:x:{UID}:\n")
    rpm("--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts", str(packages["rpm"]))
    return root


def test_scratch_root_install(scratch_root):
    root = str(scratch_root)
    db = ("--root", root, "--dbpath", "/var/lib/rpm")
    assert rpm(*db, "-qc", "oauth-relay").split() == [
        "/etc/logrotate.d/oauth-relay", "/etc/oauth-relay/relay.yaml", "/etc/oauth-relay/users.yaml"]
    assert rpm(*db, "-V", "--nodeps", "oauth-relay") == ""  # every mode, owner and digest as packaged
    for path, mode, uid, gid in [("etc/oauth-relay", 0o750, 0, UID), ("etc/oauth-relay/relay.yaml", 0o640, 0, UID),
                                 ("var/lib/oauth-relay", 0o700, UID, UID), ("var/log/oauth-relay", 0o750, UID, UID)]:
        info = os.stat(scratch_root / path)
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (mode, uid, gid), path
    assert (scratch_root / "opt/oauth-relay/wheels/TARGET").read_text().strip() == "cp39"


def python39():
    candidates = [shutil.which("python3.9")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import ssl, venv, sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


@pytest.mark.skipif(python39() is None, reason="needs a CPython 3.9 (EL9's python3) to build the environment")
def test_wheelhouse_builds_and_serves_on_cpython_39(scratch_root, tmp_path):
    """What %post does on EL9 (oauth-relay-venv install), with a CPython 3.9, offline; then
    the relay from that environment checks a config and greets on two listeners."""
    base = scratch_root / "opt/oauth-relay"
    env = dict(os.environ, OAUTH_RELAY_BASE=str(base), OAUTH_RELAY_PYTHON=python39())
    subprocess.run([str(base / "libexec/oauth-relay-venv"), "install"], env=env, check=True, timeout=300)
    subprocess.run([str(base / "libexec/oauth-relay-venv"), "check"], env=env, check=True, timeout=60)
    python = base / "venv/bin/python"
    assert subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True).stdout.strip() == "(3, 9)"
    imap, smtps, closed = free_port(), free_port(), free_port()
    text = (scratch_root / "etc/oauth-relay/relay.yaml").read_text()
    text = re.sub(r"(?m)^listeners:\n(?:  - .*\n)+",
                  f'listeners:\n  - {{protocol: imap, listen: "127.0.0.1:{imap}", security: starttls}}\n'
                  f'  - {{protocol: smtp, listen: "127.0.0.1:{smtps}", security: tls}}\n', text)
    text = text.replace("state_dir: /var/lib/oauth-relay", f"state_dir: {tmp_path}/state")
    text = text.replace("runtime_dir: /run/oauth-relay", f"runtime_dir: {tmp_path}/run")
    text = text.replace("users: users.yaml", f"users: {scratch_root}/etc/oauth-relay/users.yaml")
    text += (f"\nupstream:\n  imap: {{host: 127.0.0.1, port: {closed}, security: tls}}\n"
             f"  pop3: {{host: 127.0.0.1, port: {closed}, security: tls}}\n"
             f"  smtp: {{host: 127.0.0.1, port: {closed}, security: starttls}}\n")
    config = tmp_path / "relay.yaml"
    config.write_text(text)
    check = subprocess.run([str(python), "-I", "-m", "relay", "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and ": OK (2 listeners" in check.stdout, check.stdout + check.stderr
    relay = subprocess.Popen([str(python), "-I", "-m", "relay", "serve", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", imap), timeout=5) as conn:
                    greeting = conn.recv(200)
                if greeting:
                    break
            except OSError:
                pass
            assert relay.poll() is None and time.monotonic() < deadline, relay.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        assert greeting.startswith(b"* OK"), greeting
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=45) == 0
    finally:
        if relay.poll() is None:
            os.killpg(relay.pid, signal.SIGKILL)
            relay.wait()
        relay.stdout.close()
