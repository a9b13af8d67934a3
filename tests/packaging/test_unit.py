"""packaging/oauth-relay.service: its settings, its offline security score, and that the
unit, tmpfiles.d, sysusers.d, logrotate and the relay's defaults agree with one another."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "oauth-relay.service"
# systemd-analyze security: 0 (locked down) .. 10 (exposed). 1.4 when this was written;
# what is left is the network itself (it relays mail), AF_UNIX/AF_INET and the capability.
EXPOSURE_THRESHOLD = 2.0


def unit_settings():
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key), []).append(value)
    return settings


def one(settings, section, key):
    values = settings.get((section, key))
    assert values and len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def test_service_essentials():
    s = unit_settings()
    assert one(s, "Service", "Type") == "notify"
    assert one(s, "Service", "NotifyAccess") == "main"  # workers never notify (sdnotify.py)
    assert one(s, "Service", "User") == one(s, "Service", "Group") == "oauth-relay"
    config = "--config /etc/oauth-relay/relay.yaml"
    assert one(s, "Service", "ExecStartPre") == f"/usr/bin/oauth-relay check-config {config}"
    assert one(s, "Service", "ExecStart") == f"/usr/bin/oauth-relay serve {config}"
    assert one(s, "Service", "ExecReload") == f"/usr/bin/oauth-relay reload --wait {config}"
    assert one(s, "Service", "Restart") == "on-failure"
    assert one(s, "Service", "RestartPreventExitStatus") == "78"
    assert one(s, "Service", "KillMode") == "mixed"
    assert one(s, "Install", "WantedBy") == "multi-user.target"


def test_privileges_and_hardening():
    s = unit_settings()
    assert one(s, "Service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(s, "Service", "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("UMask", "0077"), ("MemoryDenyWriteExecute", "yes"),
                       ("LockPersonality", "yes"), ("RestrictNamespaces", "yes"),
                       ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                       ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"),
                       ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
                       ("SystemCallArchitectures", "native"),
                       ("StateDirectory", "oauth-relay"), ("LogsDirectory", "oauth-relay"),
                       ("RuntimeDirectory", "oauth-relay")]:
        assert one(s, "Service", key) == value, key
    assert s[("Service", "SystemCallFilter")] == ["@system-service", "~@privileged @resources"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_offline_security_score_under_threshold():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                             f"--threshold={int(EXPOSURE_THRESHOLD * 10)}", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for oauth-relay\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= EXPOSURE_THRESHOLD, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_directories_agree():
    """Unit *DirectoryMode=, tmpfiles.d and the package's directories say the same."""
    s = unit_settings()
    tmpfiles, recursive = {}, set()
    for line in (REPO / "packaging" / "tmpfiles.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            kind, path, mode, user, group, _age = line.split()
            assert (user, group) == ("oauth-relay", "oauth-relay")
            if kind == "d":
                tmpfiles[path] = mode
            else:
                assert (kind, mode) == ("Z", "-"), line  # ownership only, never modes
                recursive.add(path)
    assert recursive == {"/var/lib/oauth-relay", "/var/log/oauth-relay"}
    assert tmpfiles == {"/run/oauth-relay": one(s, "Service", "RuntimeDirectoryMode"),
                        "/var/lib/oauth-relay": one(s, "Service", "StateDirectoryMode"),
                        "/var/log/oauth-relay": one(s, "Service", "LogsDirectoryMode")}
    nfpm = yaml.safe_load((REPO / "packaging" / "nfpm.yaml").read_text())
    dirs = {entry["dst"]: entry["file_info"] for entry in nfpm["contents"] if entry.get("type") == "dir"}
    for path in ("/var/lib/oauth-relay", "/var/log/oauth-relay"):
        assert "%04o" % dirs[path]["mode"] == tmpfiles[path], path
        assert dirs[path]["owner"] == dirs[path]["group"] == "oauth-relay"


def test_relay_defaults_match_the_unit_and_logrotate():
    """conf/relay.yaml (the packaged config) uses the unit's directories, and logrotate's
    pid file is the relay's own in runtime_dir."""
    config = yaml.safe_load((REPO / "conf" / "relay.yaml").read_text())
    assert config["state_dir"] == "/var/lib/oauth-relay"
    assert config["runtime_dir"] == "/run/oauth-relay"
    assert config["journal"]["file"] is None  # stderr: the systemd journal
    logrotate = (REPO / "logrotate" / "oauth-relay").read_text()
    assert re.search(r"(?m)^/var/log/oauth-relay/\*\.log \{", logrotate), logrotate
    from relay.master import state
    assert f"/run/oauth-relay/{state.PID_FILE}" in logrotate
    assert "USR1" in logrotate


def test_sysusers_line():
    lines = [line for line in (REPO / "packaging" / "sysusers.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == ['u oauth-relay - "OAuth Relay" /var/lib/oauth-relay']
