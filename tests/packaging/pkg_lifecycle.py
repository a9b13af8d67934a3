"""The .deb on this machine, from `dpkg -i` to `dpkg --purge`, as ordered steps.

Run once per test run (conftest.deb_lifecycle); each step's outcome (None, or the error)
is reported by its own test in test_deb_install.py. Whatever happens, cleanup() purges the
package, ends every process it started, removes the account it created and checks that
the machine is as it was before (step "restored").

The service is started the way oauth-relay.service starts it, but without systemd (CI has
none as PID 1): ExecStartPre, ExecStart and ExecReload run as the service user in
sandbox.py's emulation of the unit's sandbox, with a NOTIFY_SOCKET of the test's own.
"""

from __future__ import annotations

import os
import pwd
import grp
import re
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tests.support import free_port as support_free_port

HERE = Path(__file__).resolve().parent
USER = "oauth-relay"
TEST_DIR = Path(f"/run/oauth-relay-test-{os.getpid()}")
MARKER = Path("/etc/oauth-relay/.installed-by-packaging-tests")
UNIT = "/usr/lib/systemd/system/oauth-relay.service"
WANTS = Path("/etc/systemd/system/multi-user.target.wants/oauth-relay.service")
# Everything the package, its scripts or its service may leave on the machine.
FOOTPRINT = ["/opt/oauth-relay", "/etc/oauth-relay", "/var/lib/oauth-relay", "/var/log/oauth-relay",
             "/run/oauth-relay", "/usr/bin/oauth-relay", UNIT, "/usr/lib/sysusers.d/oauth-relay.conf",
             "/usr/lib/tmpfiles.d/oauth-relay.conf", "/etc/logrotate.d/oauth-relay", str(WANTS),
             "/etc/systemd/system/oauth-relay.service",
             "/var/lib/systemd/deb-systemd-helper-enabled/oauth-relay.service.dsh-also",
             "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/oauth-relay.service",
             "/var/lib/systemd/deb-systemd-helper-masked/oauth-relay.service",
             "/usr/share/doc/oauth-relay", "/usr/share/man/man1/oauth-relay.1.gz"]
SERVICE_DIRS = ["/var/lib/oauth-relay", "/var/log/oauth-relay", "/run/oauth-relay"]
PROTOCOL = {"smtp": "smtp", "smtps": "smtp", "pop3": "pop3", "pop3s": "pop3", "imap": "imap", "imaps": "imap"}
GREETING = {"smtp": b"220 ", "pop3": b"+OK", "imap": b"* OK"}

STEPS: List[Tuple[str, Callable, Tuple[str, ...]]] = []


def step(name: str, needs: Tuple[str, ...] = ("install",)):
    def register(function):
        STEPS.append((name, function, needs))
        return function
    return register


def sh(*command: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def dpkg_installed() -> bool:
    result = sh("dpkg-query", "-W", "-f=${Status}", "oauth-relay", check=False)
    return result.returncode == 0 and "installed" in result.stdout and "not-installed" not in result.stdout


def cannot_run() -> Optional[str]:
    """Why the lifecycle cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "installs a .deb: needs root"
    for tool in ("dpkg", "unshare", "setpriv", "logrotate", "systemd-analyze", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = sh("/usr/bin/python3", "-c", "import sys, seccomp; print('cp%d%d' % sys.version_info[:2])",
               check=False)
    if probe.returncode != 0:
        return "needs /usr/bin/python3 with python3-seccomp (apt-get install python3-seccomp)"
    if probe.stdout.strip() != "cp311":
        return f"the .deb is for Debian 12's CPython 3.11; /usr/bin/python3 is {probe.stdout.strip()}"
    if dpkg_installed() and not MARKER.exists():
        return "oauth-relay is installed on this machine (not by these tests): leaving it alone"
    if not MARKER.exists():
        foreign = [path for path in FOOTPRINT if os.path.lexists(path)]
        if foreign:
            return (f"{', '.join(foreign)} exist on this machine, not made by these tests (a relay run "
                    "as root with the default state_dir/runtime_dir?): the purge would delete them")
    return None


# --- helpers ---------------------------------------------------------------------------------

def free_port(privileged: bool = False) -> int:
    if not privileged:
        return support_free_port()
    for port in range(1023, 899, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise AssertionError("no free port")


def greeting(port: int, tls: bool, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with raw:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(raw) as wrapped:
                return wrapped.recv(512)
        return raw.recv(512)


def mode_owner(path: str) -> Tuple[str, str, str]:
    info = os.lstat(path)
    return (oct(stat.S_IMODE(info.st_mode)), pwd.getpwuid(info.st_uid).pw_name,
            grp.getgrgid(info.st_gid).gr_name)


def proc_status(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def user_pids() -> List[int]:
    try:
        uid = pwd.getpwnam(USER).pw_uid
    except KeyError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def snapshot() -> Dict[str, object]:
    return {"paths": {path: os.path.lexists(path) for path in FOOTPRINT},
            "passwd": sh("getent", "passwd", USER, check=False).stdout.strip(),
            "group": sh("getent", "group", USER, check=False).stdout.strip(),
            "dpkg": dpkg_installed(),
            "processes": len(user_pids())}


class Notify:
    """The NOTIFY_SOCKET systemd would give the service; records (sender pid, message)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: List[Tuple[int, str]] = []

    def wait_for(self, field: str, timeout: float) -> Tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {field} on NOTIFY_SOCKET in {timeout} s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            message = data.decode()
            self.messages.append((pid, message))
            if field in message.split("\n"):
                return pid, message

    def close(self) -> None:
        self.sock.close()


class Ctx:
    def __init__(self, deb: Path, work: Path, bed=None, bed_error: Optional[str] = None):
        self.deb = deb
        self.work = work
        self.bed = bed
        self.bed_error = bed_error
        self.local_user: Optional[Tuple[str, str, str]] = None  # name, password, account
        self.before: Dict[str, object] = {}
        self.created_user = False
        self.relay: Optional[subprocess.Popen] = None
        self.notify: Optional[Notify] = None
        self.ports: Dict[str, Tuple[int, bool]] = {}
        self.config = TEST_DIR / "relay.yaml"
        self.log = open(work / "relay.out", "w")

    def sandboxed(self, *command: str, env: Tuple[str, ...] = ()) -> List[str]:
        argv = ["unshare", "--mount", "--propagation", "private", "/usr/bin/python3", "-I",
                str(TEST_DIR / "sandbox.py"), "mounts", "--user", USER]
        for path in SERVICE_DIRS:
            argv += ["--rw", path]
        for item in env:
            argv += ["--env", item]
        return argv + ["--", *command]


# --- the steps -------------------------------------------------------------------------------

@step("install", needs=())
def install(ctx: Ctx) -> None:
    # What a relay once run as root (scripts/serve-dev) leaves: the package must hand it over.
    stale = Path("/var/lib/oauth-relay/tls")
    stale.mkdir(parents=True)
    (stale / "left-by-root").touch()
    result = sh("dpkg", "-i", str(ctx.deb), timeout=300)
    (ctx.work / "dpkg-i.log").write_text(result.stdout + result.stderr)
    MARKER.touch()
    ctx.created_user = not ctx.before["passwd"]


@step("account")
def account(ctx: Ctx) -> None:
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000 and user.pw_uid != 0, f"not a system uid: {user.pw_uid}"
    assert grp.getgrgid(user.pw_gid).gr_name == USER
    assert user.pw_dir == "/var/lib/oauth-relay", user.pw_dir
    assert user.pw_shell.endswith("/nologin"), user.pw_shell


@step("files")
def files(ctx: Ctx) -> None:
    expected = {
        "/etc/oauth-relay": ("0o750", "root", USER),
        "/etc/oauth-relay/relay.yaml": ("0o640", "root", USER),
        "/etc/oauth-relay/users.yaml": ("0o640", "root", USER),
        "/var/lib/oauth-relay": ("0o700", USER, USER),
        "/var/lib/oauth-relay/tls/left-by-root": ("0o644", USER, USER),
        "/var/log/oauth-relay": ("0o750", USER, USER),
        "/run/oauth-relay": ("0o750", USER, USER),
        "/usr/bin/oauth-relay": ("0o755", "root", "root"),
        "/opt/oauth-relay/libexec/oauth-relay-venv": ("0o755", "root", "root"),
        UNIT: ("0o644", "root", "root"),
        "/etc/logrotate.d/oauth-relay": ("0o644", "root", "root"),
    }
    wrong = {path: (mode_owner(path), want) for path, want in expected.items() if mode_owner(path) != want}
    assert not wrong, f"(have, want): {wrong}"
    conffiles = sh("dpkg-query", "-W", "-f=${Conffiles}", "oauth-relay").stdout.split()
    assert {"/etc/oauth-relay/relay.yaml", "/etc/oauth-relay/users.yaml",
            "/etc/logrotate.d/oauth-relay"} <= set(conffiles), conffiles
    link = os.readlink("/opt/oauth-relay/venv")
    assert re.fullmatch(r"venvs/[0-9][^/]*-[0-9a-f]{12}", link), link
    venv = Path("/opt/oauth-relay") / link
    assert (venv / ".complete").exists()
    assert os.path.realpath(venv / "bin/python").startswith("/usr/bin/python3"), "not the target's python3"
    assert os.listdir("/opt/oauth-relay/venvs") == [link.split("/")[1]]
    # Enabled (deb-systemd-helper), not started.
    assert WANTS.is_symlink() and os.readlink(WANTS).endswith("/oauth-relay.service"), "not enabled"
    assert not user_pids(), "something runs as oauth-relay right after install"
    version = sh("oauth-relay", "version").stdout
    assert version.startswith("oauth-relay "), version


@step("unit_verify")
def unit_verify(ctx: Ctx) -> None:
    result = sh("systemd-analyze", "verify", UNIT, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@step("check_config_packaged")
def check_config_packaged(ctx: Ctx) -> None:
    result = sh("oauth-relay", "check-config")
    assert "/etc/oauth-relay/relay.yaml: OK" in result.stdout, result.stdout


def write_test_config(ctx: Ctx) -> None:
    """The packaged relay.yaml with loopback listeners, an upstream on loopback (nothing
    listens: no lookup leaves the machine) and a journal file; state and runtime dirs are
    the packaged ones."""
    TEST_DIR.mkdir(mode=0o750, exist_ok=True)
    os.chown(TEST_DIR, 0, grp.getgrnam(USER).gr_gid)
    shutil.copy(HERE / "sandbox.py", TEST_DIR / "sandbox.py")
    os.chmod(TEST_DIR / "sandbox.py", 0o644)
    privileged = free_port(privileged=True)
    ctx.ports = {"smtp": (free_port(), False), "smtps": (free_port(), True),
                 "pop3": (free_port(), False), "pop3s": (free_port(), True),
                 "imap": (free_port(), False), "imaps": (privileged, True)}
    listeners = "".join(
        f'  - {{protocol: {PROTOCOL[name]}, listen: "127.0.0.1:{port}", '
        f'security: {"tls" if tls else "starttls"}}}\n'
        for name, (port, tls) in ctx.ports.items())
    text = Path("/etc/oauth-relay/relay.yaml").read_text()
    text, count = re.subn(r"(?m)^listeners:\n(?:  - .*\n)+", "listeners:\n" + listeners, text)
    assert count == 1, "no listeners block in the packaged relay.yaml"
    text, count = re.subn(r"(?m)^users: users\.yaml$", "users: /etc/oauth-relay/users.yaml", text)
    assert count == 1
    text, count = re.subn(r"(?m)^  file: null$", "  file: /var/log/oauth-relay/relay.log", text)
    assert count == 1
    bed = ctx.bed
    if bed is None:
        closed = free_port()
        text += ("\nupstream:\n"
                 f"  imap: {{host: 127.0.0.1, port: {closed}, security: tls}}\n"
                 f"  pop3: {{host: 127.0.0.1, port: {closed}, security: tls}}\n"
                 f"  smtp: {{host: 127.0.0.1, port: {closed}, security: starttls}}\n")
    else:
        # The test bed plays Office 365. Its CA must be where the sandbox lets the service
        # read (PrivateTmp hides the bed's /tmp).
        ca_file = TEST_DIR / "bed-ca.pem"
        shutil.copy(bed.ca_file, ca_file)
        os.chmod(ca_file, 0o644)
        text += ("\nupstream:\n"
                 f"  imap: {{host: {bed.upstream_host}, port: {bed.imaps_port}, security: tls}}\n"
                 f"  pop3: {{host: {bed.upstream_host}, port: {bed.pop3s_port}, security: tls}}\n"
                 f"  smtp: {{host: {bed.upstream_host}, port: {bed.smtp_port}, security: starttls}}\n"
                 f"  ca_file: {ca_file}\n")
        client_id = bed.idp.register_app(type="public")
        text, count = re.subn(r"(?m)^apps: \{\}$",
                              f"apps:\n  bed: {{client_id: {client_id}, tenant: {bed.tenant}, type: public, "
                              f"flow: device_code, authority: '{bed.idp.authority()}'}}", text)
        assert count == 1, "no `apps: {}` in the packaged relay.yaml"
    ctx.config.write_text(text)
    os.chown(ctx.config, 0, grp.getgrnam(USER).gr_gid)
    os.chmod(ctx.config, 0o640)


@step("exec_start_pre")
def exec_start_pre(ctx: Ctx) -> None:
    write_test_config(ctx)
    result = sh(*ctx.sandboxed("/usr/bin/oauth-relay", "check-config", "--config", str(ctx.config)))
    assert ": OK (6 listeners" in result.stdout, result.stdout
    broken = TEST_DIR / "broken.yaml"
    broken.write_text(ctx.config.read_text().replace("state_dir:", "state_dri:"))
    os.chown(broken, 0, grp.getgrnam(USER).gr_gid)
    result = sh(*ctx.sandboxed("/usr/bin/oauth-relay", "check-config", "--config", str(broken)), check=False)
    assert result.returncode == 78, (result.returncode, result.stdout, result.stderr)
    assert "state_dri" in result.stderr, result.stderr


def greet_all(ctx: Ctx) -> Dict[str, bytes]:
    answers = {name: greeting(port, tls) for name, (port, tls) in ctx.ports.items()}
    wrong = {name: answer for name, answer in answers.items() if not answer.startswith(GREETING[PROTOCOL[name]])}
    assert not wrong, f"unexpected greetings: {wrong}"
    return answers


@step("serve", needs=("install", "exec_start_pre"))
def serve(ctx: Ctx) -> None:
    ctx.notify = Notify(TEST_DIR / "notify")
    ctx.relay = subprocess.Popen(
        ctx.sandboxed("/usr/bin/oauth-relay", "serve", "--config", str(ctx.config),
                      env=(f"NOTIFY_SOCKET={ctx.notify.path}",)),
        stdout=ctx.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pid, message = ctx.notify.wait_for("READY=1", timeout=90)
    assert pid == ctx.relay.pid, f"READY=1 came from {pid}, the main process is {ctx.relay.pid} (NotifyAccess=main)"
    senders = {sender for sender, _ in ctx.notify.messages}
    assert senders == {ctx.relay.pid}, f"notifications from {senders}: only the main process may send"
    greet_all(ctx)
    status = proc_status(ctx.relay.pid)
    uid = str(pwd.getpwnam(USER).pw_uid)
    assert status["Uid"].split()[:2] == [uid, uid], status["Uid"]
    assert int(status["CapEff"], 16) == 1 << 10, f"CapEff {status['CapEff']}: only CAP_NET_BIND_SERVICE"
    assert int(status["CapBnd"], 16) == 1 << 10, f"CapBnd {status['CapBnd']}"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    workers = [pid for pid in user_pids() if pid != ctx.relay.pid]
    assert len(workers) >= len(ctx.ports), f"workers: {workers}"
    for worker in workers:
        assert proc_status(worker)["Seccomp"] == "2"


@step("hup_reload", needs=("serve",))
def hup_reload(ctx: Ctx) -> None:
    ctx.notify.messages.clear()
    os.kill(ctx.relay.pid, signal.SIGHUP)
    ctx.notify.wait_for("RELOADING=1", timeout=30)
    pid, message = ctx.notify.wait_for("READY=1", timeout=60)
    assert "generation 2" in message, message
    greet_all(ctx)
    assert ctx.relay.poll() is None


@step("exec_reload", needs=("serve",))
def exec_reload(ctx: Ctx) -> None:
    result = sh(*ctx.sandboxed("/usr/bin/oauth-relay", "reload", "--wait", "--config", str(ctx.config)),
                timeout=60)
    assert "Reloaded" in result.stdout, result.stdout + result.stderr
    greet_all(ctx)


@step("bed_sign_in", needs=("serve",))
def bed_sign_in(ctx: Ctx) -> None:
    """As the admin would, as root: `user add` into the packaged users.yaml, `login` (device
    code, approved at the bed's identity provider); the relay picks both up by itself."""
    assert ctx.bed is not None, f"no test bed: {ctx.bed_error}"
    account = ctx.bed.new_account("pkg")
    name, password = f"pkg-{os.getpid()}", "packaged relay secret"
    journal = Path("/var/log/oauth-relay/relay.log")
    swaps = journal.read_text().count("users_swapped")
    sh("oauth-relay", "user", "add", name, "--account", account, "--password-stdin", "--config",
       str(ctx.config), input=password + "\n")
    assert mode_owner("/etc/oauth-relay/users.yaml") == ("0o640", "root", USER), "user add changed its mode"
    login = subprocess.Popen(["oauth-relay", "login", account, "--flow", "device_code", "--no-browser",
                              "--config", str(ctx.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        code = ctx.bed.idp.wait_for_device_code(timeout=30)
        ctx.bed.idp.approve_device_code(code["user_code"], account)
        output, _ = login.communicate(timeout=90)
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()
    assert login.returncode == 0, output
    # Run as root, `login` stored the tokens as the service user: the relay can read them.
    for entry in Path("/var/lib/oauth-relay").rglob("*"):
        assert mode_owner(str(entry))[1] == USER, f"{entry} is not the service user's"
    deadline = time.monotonic() + 20
    while journal.read_text().count("users_swapped") < swaps + len(ctx.ports):
        assert time.monotonic() < deadline, "the workers did not pick up users.yaml"
        time.sleep(0.1)
    ctx.local_user = (name, password, account)


@step("bed_imap_and_smtp", needs=("bed_sign_in",))
def bed_imap_and_smtp(ctx: Ctx) -> None:
    """A legacy client's password login over IMAP, and a message sent over SMTP that the
    bed's Postfix delivers, both through the packaged, sandboxed relay."""
    import imaplib
    import smtplib

    name, password, account = ctx.local_user
    imap = imaplib.IMAP4("127.0.0.1", ctx.ports["imap"][0], timeout=30)
    try:
        assert imap.login(name, password)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()
    subject = f"through the packaged relay {os.getpid()}"
    with smtplib.SMTP("127.0.0.1", ctx.ports["smtp"][0], timeout=30) as smtp:
        smtp.login(name, password)
        smtp.sendmail(account, [account], f"From: {account}\r\nTo: {account}\r\nSubject: {subject}\r\n\r\nhello\r\n")
    messages = ctx.bed.wait_for_delivery(account, timeout=30)
    assert any(subject.encode() in message for message in messages), messages


@step("logrotate", needs=("serve",))
def logrotate(ctx: Ctx) -> None:
    log = Path("/var/log/oauth-relay/relay.log")
    assert log.exists() and log.stat().st_size > 0, "the relay wrote no journal file"
    assert mode_owner(str(log))[1] == USER
    result = sh("logrotate", "-f", "-s", str(ctx.work / "logrotate.state"), "/etc/logrotate.d/oauth-relay")
    assert Path("/var/log/oauth-relay/relay.log.1").exists(), result.stdout + result.stderr
    deadline = time.monotonic() + 10
    while "journal_reopened" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no journal_reopened in the new relay.log (USR1 from postrotate)"
        time.sleep(0.2)
    assert mode_owner(str(log)) == ("0o640", USER, USER), mode_owner(str(log))


@step("term_stop", needs=("serve",))
def term_stop(ctx: Ctx) -> None:
    ctx.notify.messages.clear()
    started = time.monotonic()
    os.kill(ctx.relay.pid, signal.SIGTERM)
    ctx.notify.wait_for("STOPPING=1", timeout=10)
    code = ctx.relay.wait(timeout=45)  # TimeoutStopSec=45s
    assert code == 0, f"exit code {code} after SIGTERM"
    assert time.monotonic() - started < 45
    deadline = time.monotonic() + 5
    while user_pids():
        assert time.monotonic() < deadline, f"still running as oauth-relay: {user_pids()}"
        time.sleep(0.1)
    ctx.relay = None


@step("reinstall_keeps_config")
def reinstall_keeps_config(ctx: Ctx) -> None:
    config = Path("/etc/oauth-relay/relay.yaml")
    config.write_text(config.read_text() + "# edited by the admin\n")
    link = os.readlink("/opt/oauth-relay/venv")
    sh("dpkg", "-i", str(ctx.deb), timeout=300)
    assert config.read_text().endswith("# edited by the admin\n"), "the admin's edit was overwritten"
    assert mode_owner(str(config)) == ("0o640", "root", USER)
    assert os.readlink("/opt/oauth-relay/venv") == link, "same wheels, yet a new environment"
    assert len(os.listdir("/opt/oauth-relay/venvs")) == 1


@step("remove_keeps_data")
def remove_keeps_data(ctx: Ctx) -> None:
    sh("dpkg", "-r", "oauth-relay")
    for path in ("/opt/oauth-relay", "/usr/bin/oauth-relay", UNIT):
        assert not os.path.lexists(path), f"{path} is still there after dpkg -r"
    assert Path("/etc/oauth-relay/relay.yaml").read_text().endswith("# edited by the admin\n")
    assert Path("/var/lib/oauth-relay/token.key").exists(), "dpkg -r removed the token store"
    assert pwd.getpwnam(USER)
    status = sh("dpkg-query", "-W", "-f=${Status}", "oauth-relay").stdout
    assert status.endswith("config-files"), status


@step("purge")
def purge(ctx: Ctx) -> None:
    sh("dpkg", "--purge", "oauth-relay")
    left = [path for path in FOOTPRINT if os.path.lexists(path)]
    assert not left, f"left after dpkg --purge: {left}"
    assert not dpkg_installed()
    # Documented: the account stays (files elsewhere may carry its id).
    assert pwd.getpwnam(USER)


# --- running them ---------------------------------------------------------------------------

def cleanup(ctx: Ctx) -> Optional[str]:
    problems = []
    if ctx.relay is not None and ctx.relay.poll() is None:
        os.killpg(ctx.relay.pid, signal.SIGKILL)
        ctx.relay.wait(10)
    for pid in user_pids():
        try:
            os.kill(pid, signal.SIGKILL)
            problems.append(f"killed leftover process {pid}")
        except ProcessLookupError:
            pass
    if ctx.notify is not None:
        ctx.notify.close()
    ctx.log.close()
    if dpkg_installed() or sh("dpkg-query", "-W", "oauth-relay", check=False).returncode == 0:
        sh("dpkg", "--purge", "oauth-relay", check=False)
    shutil.rmtree(TEST_DIR, ignore_errors=True)
    if ctx.created_user:
        sh("userdel", USER, check=False)
        if sh("getent", "group", USER, check=False).returncode == 0:
            sh("groupdel", USER, check=False)
    after = snapshot()
    if after != ctx.before:
        problems.append(f"the machine differs from before: before {ctx.before}, after {after}")
    return "\n".join(problems) or None


def run(deb: Path, work: Path, bed=None, bed_error: Optional[str] = None) -> Dict[str, Optional[str]]:
    work.mkdir(parents=True, exist_ok=True)
    if dpkg_installed() and MARKER.exists():  # a run that died before its cleanup
        sh("dpkg", "--purge", "oauth-relay", check=False)
    ctx = Ctx(deb, work, bed, bed_error)
    ctx.before = snapshot()
    results: Dict[str, Optional[str]] = {}
    try:
        for name, function, needs in STEPS:
            failed = [need for need in needs if results.get(need, "not run") is not None]
            if failed:
                results[name] = f"not run: {', '.join(failed)} did not pass"
                continue
            started = time.monotonic()
            try:
                function(ctx)
                results[name] = None
            except Exception:  # noqa: BLE001 - reported by the step's test
                results[name] = traceback.format_exc()
            with open(work / "timings", "a") as timings:
                timings.write(f"{name} {time.monotonic() - started:.1f}\n")
    finally:
        try:
            results["restored"] = cleanup(ctx)
        except Exception:  # noqa: BLE001
            results["restored"] = traceback.format_exc()
    return results
