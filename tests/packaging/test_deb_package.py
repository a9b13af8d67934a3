"""The .deb as built: control fields, file list and modes, conffiles, payload, scripts."""

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.packaging


def dpkg_deb(*args):
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def tree(packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-R", str(packages["deb"]), str(root)], check=True)
    return root


def test_control(packages):
    field = lambda name: dpkg_deb("-f", str(packages["deb"]), name).strip()  # noqa: E731
    assert field("Package") == "oauth-relay"
    assert field("Architecture") == "amd64"
    # The wheels are for CPython 3.11's ABI: Debian 12's python3, nothing else.
    assert field("Depends") == "python3 (>= 3.11~), python3 (<< 3.12)"
    version = re.search(r'__version__ = "(.+)"', (REPO / "relay" / "__init__.py").read_text()).group(1)
    assert field("Version").startswith(version + "-")


def test_file_list_and_modes(packages):
    listing = {}
    for line in dpkg_deb("-c", str(packages["deb"])).splitlines():
        perms, owner, _size, _date, _time, path = line.split(None, 5)
        listing[path.lstrip(".").rstrip("/") or "/"] = (perms, owner)
    expected = {
        "/usr/bin/oauth-relay": ("-rwxr-xr-x", "root/root"),
        "/usr/lib/systemd/system/oauth-relay.service": ("-rw-r--r--", "root/root"),
        "/usr/lib/sysusers.d/oauth-relay.conf": ("-rw-r--r--", "root/root"),
        "/usr/lib/tmpfiles.d/oauth-relay.conf": ("-rw-r--r--", "root/root"),
        "/etc/oauth-relay": ("drwxr-x---", "root/oauth-relay"),
        "/etc/oauth-relay/relay.yaml": ("-rw-r-----", "root/oauth-relay"),
        "/etc/oauth-relay/users.yaml": ("-rw-r-----", "root/oauth-relay"),
        "/etc/logrotate.d/oauth-relay": ("-rw-r--r--", "root/root"),
        "/opt/oauth-relay/libexec/oauth-relay-venv": ("-rwxr-xr-x", "root/root"),
        "/opt/oauth-relay/requirements.txt": ("-rw-r--r--", "root/root"),
        "/var/lib/oauth-relay": ("drwx------", "oauth-relay/oauth-relay"),
        "/var/log/oauth-relay": ("drwxr-x---", "oauth-relay/oauth-relay"),
        "/usr/share/man/man1/oauth-relay.1.gz": ("-rw-r--r--", "root/root"),
        "/usr/share/doc/oauth-relay/copyright": ("-rw-r--r--", "root/root"),
        "/usr/share/doc/oauth-relay/README.md": ("-rw-r--r--", "root/root"),
        "/usr/share/lintian/overrides/oauth-relay": ("-rw-r--r--", "root/root"),
    }
    wrong = {path: (listing.get(path), want) for path, want in expected.items() if listing.get(path) != want}
    assert not wrong, f"(have, want): {wrong}"
    assert "/usr/lib/systemd/system-preset/80-oauth-relay.preset" not in listing  # rpm only


def test_conffiles(tree):
    conffiles = (tree / "DEBIAN" / "conffiles").read_text().split()
    assert sorted(conffiles) == ["/etc/logrotate.d/oauth-relay", "/etc/oauth-relay/relay.yaml",
                                 "/etc/oauth-relay/users.yaml"]


def test_shipped_configuration_is_the_repository_s(tree):
    """Packaged relay.yaml = conf/relay.yaml (standard ports and paths, journal to stderr)."""
    assert (tree / "etc/oauth-relay/relay.yaml").read_text() == (REPO / "conf/relay.yaml").read_text()
    assert (tree / "etc/oauth-relay/users.yaml").read_text() == (REPO / "conf/users.yaml").read_text()
    assert (tree / "etc/logrotate.d/oauth-relay").read_text() == (REPO / "logrotate/oauth-relay").read_text()
    assert (tree / "usr/lib/systemd/system/oauth-relay.service").read_text() == \
        (REPO / "packaging/oauth-relay.service").read_text()


def test_wheelhouse_is_for_cpython_311_and_complete(tree):
    wheels = tree / "opt/oauth-relay/wheels"
    assert (wheels / "TARGET").read_text().strip() == "cp311"
    names = sorted(p.name for p in wheels.glob("*.whl"))
    tags = {re.match(r"[^-]+-[^-]+-([^-]+)-", name).group(1) for name in names}
    assert tags <= {"py3", "py2.py3", "cp311"}, tags
    for line in (wheels / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((wheels / name).read_bytes()).hexdigest() == digest, name
    assert any(name.startswith("oauth_relay-") for name in names)
    assert any(name.startswith("pip-") for name in names)
    pins = [line.split("==")[0].split()[0].lower().replace("_", "-").replace(".", "-")
            for line in (REPO / "packaging/requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    shipped = {name.split("-")[0].lower().replace("_", "-") for name in names}
    missing = [pin for pin in pins if pin not in shipped]
    assert not missing, missing


def test_pins_cover_setup_py_requirements():
    setup = (REPO / "setup.py").read_text()
    required = re.findall(r'^\s+"([A-Za-z0-9_.\-]+)\s*[<>=!~]', setup[setup.index("install_requires"):
                                                                   setup.index("extras_require")], re.M)
    pins = (REPO / "packaging/requirements.txt").read_text().lower()
    missing = [name for name in required if f"\n{name.lower()}==" not in pins]
    assert required and not missing, missing


def test_maintainer_scripts(tree):
    sysusers = [line for line in (REPO / "packaging/sysusers.conf").read_text().splitlines()
                if line and not line.startswith("#")][0]
    for name in ("preinst", "postinst", "prerm", "postrm"):
        script = (tree / "DEBIAN" / name).read_text()
        assert "#@" not in script and "@sysusers@" not in script, name
        subprocess.run(["sh", "-n", str(tree / "DEBIAN" / name)], check=True)
    assert sysusers in (tree / "DEBIAN/preinst").read_text()
    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "deb-systemd-helper enable oauth-relay.service" in postinst
    assert "deb-systemd-invoke try-restart" in postinst and "deb-systemd-invoke start" not in postinst
    assert "/opt/oauth-relay/libexec/oauth-relay-venv install" in postinst
    postrm = (tree / "DEBIAN/postrm").read_text()
    assert "rm -rf /etc/oauth-relay /var/lib/oauth-relay /var/log/oauth-relay /run/oauth-relay" in postrm


def test_man_page_renders(tree):
    result = subprocess.run(["man", "--warnings", "-l", "-Tutf8", "-Z",
                             str(tree / "usr/share/man/man1/oauth-relay.1.gz")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("sysusers", [True, False], ids=["systemd-sysusers", "useradd-fallback"])
def test_preinst_creates_the_account(tree, tmp_path, sysusers):
    """preinst makes the account with systemd-sysusers, or with groupadd/useradd where that
    is missing. Stub commands record what they were asked (nothing touches this machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stubs = {"getent": "exit 2", "groupadd": "", "useradd": ""}
    if sysusers:
        stubs["systemd-sysusers"] = '/bin/cat >>"$CALLS"'
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >>"$CALLS"\n{body}\n')
        stub.chmod(0o755)
    subprocess.run(["/bin/sh", str(tree / "DEBIAN/preinst"), "install"], check=True,
                   env={"PATH": str(bin_dir), "CALLS": str(calls)})
    recorded = calls.read_text().splitlines()
    if sysusers:
        assert recorded[-2:] == ["systemd-sysusers --replace=/usr/lib/sysusers.d/oauth-relay.conf -",
                                 'u oauth-relay - "OAuth Relay" /var/lib/oauth-relay'], recorded
        assert not any(line.startswith(("useradd", "groupadd")) for line in recorded)
    else:
        assert "groupadd --system oauth-relay" in recorded, recorded
        useradd = [line for line in recorded if line.startswith("useradd")]
        assert useradd and useradd[0].startswith(
            "useradd --system --gid oauth-relay --home-dir /var/lib/oauth-relay --no-create-home --shell "), useradd
        assert useradd[0].endswith("--comment OAuth Relay oauth-relay"), useradd
