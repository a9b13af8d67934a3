"""check-config points at the exact line and column of each mistake an admin makes."""

import subprocess
import sys
import textwrap

import pytest

from relay.config import ConfigInvalid, load_config

APPS = """
apps:
  contoso:
    client_id: 11111111-2222-3333-4444-555555555555
    tenant: contoso.onmicrosoft.com
    type: public
"""
USER = """
alice:
  password: $scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk
  account: alice@contoso.com
"""


def write(tmp_path, relay, users=USER):
    (tmp_path / "relay.yaml").write_text(textwrap.dedent(relay))
    # latin-1 so a test can put a byte that is not UTF-8 into the file
    (tmp_path / "users.yaml").write_bytes(textwrap.dedent(users).encode("latin-1"))
    return tmp_path / "relay.yaml"


def check_config(path):
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_good_config_exits_zero(tmp_path):
    code, output = check_config(write(tmp_path, "state_dir: state\n" + APPS))
    assert code == 0, output
    assert "OK (6 listeners, 1 apps, 1 users" in output


def test_default_conf_is_valid():
    code, output = check_config("conf/relay.yaml")
    assert code == 0, output


@pytest.mark.parametrize("relay, users, expected", [
    ("apps: [1, 2\n", USER, "relay.yaml:2:1: YAML syntax"),
    (APPS, USER + "\nalice:\n  password: $scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk\n", "users.yaml:6:1: alice: duplicate key (first defined on line 2)"),
    (APPS + "jurnal: {}\n", USER, "relay.yaml:7:1: jurnal: unknown key"),
    (APPS + "listeners:\n  - {protocol: imap, listen: '127.0.0.1:70000', security: tls}\n", USER,
     "relay.yaml:8:30: listeners[0].listen: port must be between 1 and 65535"),
    (APPS + "listeners:\n  - {protocol: imap, listen: '127.0.0.1:1143', security: tls}\n"
            "  - {protocol: pop3, listen: '127.0.0.1:1143', security: tls}\n", USER,
     "relay.yaml:9:30: listeners[1].listen: 127.0.0.1:1143 is already used by listeners[0]"),
    (APPS, USER + "  app: fabrikam\n", "users.yaml:5:8: alice.app: unknown app 'fabrikam' (apps in relay.yaml: contoso)"),
    (APPS + "listeners:\n  - {protocol: imap, listen: '0.0.0.0:1143', security: tls}\n"
            "  - {protocol: pop3, listen: '127.0.0.1:1143', security: tls}\n", USER,
     "relay.yaml:9:30: listeners[1].listen: 127.0.0.1:1143 is already used by listeners[0] (0.0.0.0:1143)"),
    (APPS + "auth: {failure_dealy: 3}\n", USER, "relay.yaml:7:8: auth.failure_dealy: unknown key"),
    (APPS, USER + "  mailbox: caf\xe9\n", "users.yaml:5:15: not UTF-8 text"),
    (APPS, USER.replace("$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk", ""),
     "users.yaml:3:13: alice.password: is not a complete scrypt hash"),
], ids=["bad-yaml", "duplicate-user", "unknown-key", "port-out-of-range", "two-listeners-one-address",
        "unknown-app", "wildcard-and-loopback-on-one-port", "unknown-key-column", "not-utf8", "broken-hash"])
def test_each_mistake_is_reported_with_file_line_column(tmp_path, relay, users, expected):
    code, output = check_config(write(tmp_path, relay, users))
    assert code == 78
    assert expected in output, output


def test_yaml_11_surprises_stay_strings(tmp_path):
    path = write(tmp_path, APPS + "hostname: no\n", "bob:\n  password: $scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk\n  account: '0143@x.test'\n"
                 "  mailbox: 0143\n")
    config, users = load_config(str(path))
    assert config.hostname == "no"
    assert users.get("bob").mailbox == "0143"


def test_all_errors_reported_at_once(tmp_path):
    path = write(tmp_path, APPS + "cloud: mars\njournal: {level: loud}\n", USER + "  protocols: [imap, nntp]\n")
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path))
    messages = [str(error) for error in caught.value.errors]
    assert any("cloud: must be one of: worldwide, gcc-high, china (got 'mars')" in m for m in messages)
    assert any("journal.level: must be one of" in m for m in messages)
    assert any("alice.protocols[1]: must be one of: imap, pop3, smtp (got 'nntp')" in m for m in messages)


def test_clear_password_is_refused(tmp_path):
    path = write(tmp_path, APPS, "alice:\n  password: hunter2\n  account: alice@contoso.com\n")
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path))
    assert "never a clear password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_public_app_with_secret_is_refused(tmp_path):
    path = write(tmp_path, APPS + "    client_secret_file: secret.txt\n")
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path))
    assert "AADSTS700025" in str(caught.value)


def test_confidential_app_needs_credential(tmp_path):
    path = write(tmp_path, APPS.replace("type: public", "type: confidential"))
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path))
    assert "AADSTS7000218" in str(caught.value)


def test_cloud_sets_hosts_together(tmp_path):
    config, _ = load_config(str(write(tmp_path, APPS + "cloud: gcc-high\n")))
    assert config.upstream.imap.host == "outlook.office365.us"
    assert config.upstream.smtp.host == "smtp.office365.us"
    assert config.cloud.login_host == "https://login.microsoftonline.us"
    assert config.cloud.resource == "https://outlook.office365.us/"


def test_plaintext_policy_defaults_to_loopback(tmp_path):
    config, _ = load_config(str(write(tmp_path, APPS)))
    assert config.auth.plaintext_allowed("127.0.0.1")
    assert config.auth.plaintext_allowed("::1")
    assert config.auth.plaintext_allowed("::ffff:127.0.0.5")
    assert not config.auth.plaintext_allowed("192.168.1.20")


def test_relative_paths_follow_the_config_file(tmp_path):
    config, users = load_config(str(write(tmp_path, "state_dir: state\n" + APPS)))
    assert config.state_dir == str(tmp_path / "state")
    assert users.path == str(tmp_path / "users.yaml")


def test_idle_timeout_under_30_minutes_is_refused(tmp_path):
    """RFC 3501 5.4: an authenticated IMAP client may stay silent for 30 minutes; a shorter
    idle timeout would cut off IDLE sessions, so check-config refuses it."""
    code, output = check_config(write(tmp_path, APPS + "limits: {idle_timeout: 600}\n"))
    assert code == 78, output
    assert "relay.yaml:7:" in output and "limits.idle_timeout: must be between 1800 and 86400 (got 600)" in output, output
    code, output = check_config(write(tmp_path, APPS + "limits: {idle_timeout: 1800}\n"))
    assert code == 0, output


def test_china_cloud_sets_hosts_together(tmp_path):
    config, _ = load_config(str(write(tmp_path, APPS + "cloud: china\n")))
    assert (config.upstream.imap.host, config.upstream.imap.port) == ("partner.outlook.cn", 993)
    assert (config.upstream.pop3.host, config.upstream.pop3.port) == ("partner.outlook.cn", 995)
    assert (config.upstream.smtp.host, config.upstream.smtp.port) == ("smtp.partner.outlook.cn", 587)
    assert config.cloud.login_host == "https://login.partner.microsoftonline.cn"
    assert config.cloud.resource == "https://partner.outlook.cn/"
    assert config.cloud.app_only_resource == "https://partner.outlook.cn/"
