"""`oauth-relay user ...` edits users.yaml without destroying the admin's comments."""

import subprocess
import sys
from pathlib import Path

from relay.config import load_config
from relay.passwords import verify_password

RELAY = """\
state_dir: state
apps:
  contoso: {client_id: 11111111-2222-3333-4444-555555555555, tenant: contoso.onmicrosoft.com, type: public}
"""
USERS = """\
# Our users, maintained by the mail admin.

alice:   # the boss
  password: $scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk
  account: alice@contoso.com
"""


def relay_cli(config, *args, password=None):
    return subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(config)],
                          input=password, capture_output=True, text=True, timeout=60)


def setup_files(tmp_path):
    (tmp_path / "relay.yaml").write_text(RELAY)
    (tmp_path / "users.yaml").write_text(USERS)
    return tmp_path / "relay.yaml"


def test_add_keeps_comments_and_stores_only_a_hash(tmp_path):
    config = setup_files(tmp_path)
    password = 'a "pass" with \\ % * and ü'
    result = relay_cli(config, "user", "add", "scanner", "--account", "scan@contoso.com", "--protocols", "smtp",
                       "--password-stdin", password=password + "\n")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "users.yaml").read_text()
    assert text.startswith(USERS), text
    assert password not in text
    _, users = load_config(str(config))
    scanner = users.get("scanner")
    assert scanner.protocols == ("smtp",) and scanner.account == "scan@contoso.com"
    assert verify_password(password, scanner.password_hash)


def test_passwd_changes_only_the_hash(tmp_path):
    config = setup_files(tmp_path)
    assert relay_cli(config, "user", "passwd", "alice", "--password-stdin", password="new one\n").returncode == 0
    _, users = load_config(str(config))
    assert verify_password("new one", users.get("alice").password_hash)
    assert "alice:   # the boss" in (tmp_path / "users.yaml").read_text()


def test_remove_and_list(tmp_path):
    config = setup_files(tmp_path)
    relay_cli(config, "user", "add", "bob", "--account", "bob@contoso.com", "--password-stdin", password="x\n")
    listed = relay_cli(config, "user", "list").stdout
    assert "alice\taccount=alice@contoso.com" in listed and "bob\taccount=bob@contoso.com" in listed
    assert relay_cli(config, "user", "remove", "bob").returncode == 0
    assert "bob" not in relay_cli(config, "user", "list").stdout
    assert (tmp_path / "users.yaml").read_text() == USERS


def test_add_refuses_what_the_relay_would_refuse(tmp_path):
    config = setup_files(tmp_path)
    result = relay_cli(config, "user", "add", "carol", "--app", "fabrikam", "--password-stdin", password="x\n")
    assert result.returncode == 1
    assert "users.yaml" in result.stderr and "unknown app 'fabrikam'" in result.stderr
    assert "carol" not in (tmp_path / "users.yaml").read_text()
    again = relay_cli(config, "user", "add", "alice", "--password-stdin", password="x\n")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_every_command_has_help_with_an_example():
    for command in ("serve", "check-config", "user", "login", "status", "reload", "version"):
        result = subprocess.run([sys.executable, "-m", "relay", command, "--help"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0
        assert "Example: oauth-relay" in result.stdout, command


def test_first_user_keeps_the_shipped_header(tmp_path):
    (tmp_path / "relay.yaml").write_text(RELAY)
    header = (Path(__file__).resolve().parents[2] / "conf" / "users.yaml").read_text()
    (tmp_path / "users.yaml").write_text(header)
    config = tmp_path / "relay.yaml"
    assert relay_cli(config, "user", "add", "scanner", "--account", "scan@contoso.com", "--password-stdin",
                     password="x y\n").returncode == 0
    text = (tmp_path / "users.yaml").read_text()
    assert text.startswith(header) and "\nscanner:\n" in text
    assert relay_cli(config, "user", "remove", "scanner").returncode == 0
    assert (tmp_path / "users.yaml").read_text() == header


def test_config_option_before_or_after_the_command(tmp_path):
    config = setup_files(tmp_path)
    for args in (["--config", str(config), "user", "list"], ["user", "--config", str(config), "list"],
                 ["user", "list", "--config", str(config)]):
        result = subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "alice\taccount=alice@contoso.com" in result.stdout, (args, result.stderr)


def test_no_app_yet_says_what_to_do(tmp_path):
    (tmp_path / "relay.yaml").write_text("state_dir: state\napps: {}\n")
    (tmp_path / "users.yaml").write_text("# none yet\n")
    result = relay_cli(tmp_path / "relay.yaml", "user", "add", "scanner", "--account", "s@contoso.com",
                       "--password-stdin", password="x\n")
    assert result.returncode == 1
    assert "add your Entra ID app under `apps:` first" in result.stderr
    assert (tmp_path / "users.yaml").read_text() == "# none yet\n"


def test_passwd_repairs_a_broken_hash_and_refuses_unknown_users_before_asking(tmp_path):
    config = setup_files(tmp_path)
    users = tmp_path / "users.yaml"
    users.write_text(USERS.replace("password: $scrypt$", "password: $scrypt$broken"))
    assert relay_cli(config, "check-config").returncode == 78
    assert relay_cli(config, "user", "passwd", "alice", "--password-stdin", password="fixed\n").returncode == 0
    assert relay_cli(config, "check-config").returncode == 0
    unknown = relay_cli(config, "user", "passwd", "nobody", "--password-stdin", password="")
    assert unknown.returncode == 1 and "no user 'nobody'" in unknown.stderr


def test_add_refuses_a_name_that_differs_only_in_case(tmp_path):
    """Logins match names without regard to case, so 'Alice' would be the same user."""
    config = setup_files(tmp_path)
    result = relay_cli(config, "user", "add", "Alice", "--account", "other@contoso.com",
                       "--password-stdin", password="x\n")
    assert result.returncode == 1
    assert result.stderr.strip() == ("user 'alice' already exists, and user names match without regard "
                                     "to letter case")
    assert (tmp_path / "users.yaml").read_text() == USERS
