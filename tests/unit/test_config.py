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


def test_user_names_match_without_regard_to_case(tmp_path):
    """An old program that sends 'Scanner' finds the user 'scanner'; two names that differ
    only in case would make that ambiguous, so they are refused with the place."""
    from relay.config.load import load_users
    from relay.config.models import AppConfig
    from relay.passwords import hash_password
    hashed = hash_password("pw", log_n=4)
    apps = {"contoso": AppConfig("contoso", "11111111-2222-3333-4444-555555555555", "contoso.com",
                                 "public", "device_code")}
    good = tmp_path / "users.yaml"
    good.write_text(f"scanner:\n  password: '{hashed}'\n  account: scanner@contoso.com\n")
    users = load_users(str(good), apps)
    assert users.get("Scanner").name == users.get("SCANNER").name == "scanner"
    assert users.get("scanner2") is None
    twice = tmp_path / "twice.yaml"
    twice.write_text(f"scanner:\n  password: '{hashed}'\n  account: a@contoso.com\n"
                     f"Scanner:\n  password: '{hashed}'\n  account: b@contoso.com\n")
    with pytest.raises(ConfigInvalid) as caught:
        load_users(str(twice), apps)
    assert [str(error) for error in caught.value.errors] == [
        f"{twice}:4:1: Scanner: the same name as 'scanner' but for letter case; "
        "logins match names without regard to case"]


CONFIDENTIAL = """
apps:
  X:
    client_id: 11111111-2222-3333-4444-555555555555
    type: confidential
    {credential}: {path}
"""


def private_file(path, data, mode=0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return path


def file_errors(path):
    """The errors that only reading the named files finds, as check-config and serve report them."""
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path), check_files=True)
    return [str(error) for error in caught.value.errors]


@pytest.mark.parametrize("credential", ["client_secret_file", "certificate_file"])
def test_a_credential_file_that_cannot_be_read_is_reported_with_its_place(tmp_path, credential):
    path = write(tmp_path, CONFIDENTIAL.format(credential=credential, path="/nonexistent/secret"))
    load_config(str(path))      # `user`, `login` and `status` read only the settings
    code, output = check_config(path)
    assert code == 78
    assert output == (f"{path}:6:{len(credential) + 7}: apps.X.{credential}: cannot read /nonexistent/secret: "
                      "No such file or directory\n"), output


def test_a_secret_file_follows_the_token_stores_rule_group_may_read_others_not(tmp_path):
    """The relay's own sign-in refuses a secret others can read (relay/tokens/apps.py); the
    packaged layout is root:oauth-relay 0640, so the group may read it."""
    secret = private_file(tmp_path / "app.secret", b"s3cret\n", 0o644)
    path = write(tmp_path, CONFIDENTIAL.format(credential="client_secret_file", path="app.secret"))
    assert file_errors(path) == [
        f"{path}:6:25: apps.X.client_secret_file: client secret file {secret} is readable by others "
        f"(mode 0644); refusing to use it. Fix: chmod o-rwx {secret}"]
    secret.chmod(0o640)
    load_config(str(path), check_files=True)
    private_file(secret, b"\n")
    assert file_errors(path) == [f"{path}:6:25: apps.X.client_secret_file: client secret file {secret} is empty"]


def test_a_certificate_file_must_hold_the_certificate_and_its_key(tmp_path):
    from relay.tls_local import _self_signed

    cert_pem, key_pem = _self_signed()
    pem = private_file(tmp_path / "app.pem", cert_pem)
    path = write(tmp_path, CONFIDENTIAL.format(credential="certificate_file", path="app.pem"))
    assert file_errors(path) == [f"{path}:6:23: apps.X.certificate_file: certificate file {pem} must hold "
                                 "a PEM certificate and its unencrypted private key"]
    private_file(pem, key_pem + cert_pem)
    load_config(str(path), check_files=True)


def test_a_tls_certificate_and_key_that_cannot_be_used_are_reported_with_their_place(tmp_path):
    from relay.tls_local import _self_signed

    (cert_pem, key_pem), (_, other_key) = _self_signed(), _self_signed()
    (tmp_path / "relay.crt").write_bytes(cert_pem)
    private_file(tmp_path / "relay.key", key_pem)
    private_file(tmp_path / "other.key", other_key)
    path = write(tmp_path, APPS + "tls: {certificate: /nonexistent.pem, key: /nonexistent.key}\n")
    assert file_errors(path) == [
        f"{path}:7:20: tls.certificate: cannot read /nonexistent.pem: No such file or directory",
        f"{path}:7:43: tls.key: cannot read /nonexistent.key: No such file or directory"]
    path = write(tmp_path, APPS + "tls:\n  certificate: relay.key\n  key: relay.key\n")
    assert file_errors(path) == [f"{path}:8:16: tls.certificate: {tmp_path}/relay.key holds no PEM certificate"]
    path = write(tmp_path, APPS + "tls:\n  certificate: relay.crt\n  key: other.key\n")
    assert file_errors(path) == [
        f"{path}:9:8: tls.key: {tmp_path}/other.key is not the private key of the certificate {tmp_path}/relay.crt"]
    path = write(tmp_path, APPS + "tls:\n  certificate: relay.crt\n  key: relay.key\n")
    load_config(str(path), check_files=True)


def test_tls_auto_passes_before_its_certificate_is_made(tmp_path):
    path = write(tmp_path, "state_dir: state\n" + APPS + "tls: auto\n")
    code, output = check_config(path)
    assert code == 0, output
    assert not (tmp_path / "state").exists()    # made by the first start, not by check-config


def test_client_id_must_be_a_guid(tmp_path):
    path = write(tmp_path, APPS.replace("11111111-2222-3333-4444-555555555555", "my-app"))
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path))
    assert [str(error) for error in caught.value.errors] == [
        f"{path}:4:16: apps.contoso.client_id: must be the app's Application (client) ID, a GUID like "
        "11111111-2222-3333-4444-555555555555 (Entra admin center: App registrations, the app, Overview); "
        "got 'my-app'"]
    load_config(str(write(tmp_path, APPS.replace("11111111-2222-3333-4444-555555555555",
                                                 "ABCDEF01-2345-6789-abcd-ef0123456789"))))


@pytest.mark.parametrize("setting", ["state_dir", "runtime_dir"])
def test_a_reload_may_not_change_state_dir_or_runtime_dir(tmp_path, setting):
    running, _ = load_config(str(write(tmp_path, f"{setting}: old\n" + APPS)))
    assert load_config(str(write(tmp_path, f"{setting}: old\n" + APPS)), running=running)
    path = write(tmp_path, f"{setting}: new\n" + APPS)
    with pytest.raises(ConfigInvalid) as caught:
        load_config(str(path), running=running)
    (error,) = [str(error) for error in caught.value.errors]
    assert error.startswith(f"{path}:1:{len(setting) + 3}: {setting}: changed from {tmp_path}/old to "
                            f"{tmp_path}/new: this needs a restart, not a reload ("), error
    assert error.endswith(f"): systemctl restart oauth-relay, or set it back to {tmp_path}/old"), error


def test_an_empty_users_file_passes_with_a_note(tmp_path):
    path = write(tmp_path, APPS, users="")
    code, output = check_config(path)
    assert code == 0, output
    assert output == (f"{path}: OK (6 listeners, 1 apps, 0 users in {tmp_path}/users.yaml)\n"
                      f"{tmp_path}/users.yaml: note: defines no users yet, so every login fails; add one with "
                      "`oauth-relay user add NAME --account ADDRESS`\n"), output
    code, output = check_config(write(tmp_path, APPS))
    assert code == 0 and "note:" not in output, output
