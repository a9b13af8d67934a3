"""What the `oauth-relay` command itself prints: a reader that goes away, the login's journal.

No identity provider here: the app's authority is a closed port on loopback, so a sign-in
fails at its first request, which is all these tests need.
"""

import os
import subprocess
import sys
from pathlib import Path

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
UNREACHABLE = "Sign-in failed: cannot reach the sign-in service. Try again in a moment.\n"


def setup_files(tmp_path, level="info") -> Path:
    config = tmp_path / "relay.yaml"
    config.write_text(f"""\
journal: {{level: {level}}}
state_dir: {tmp_path / 'state'}
apps:
  contoso: {{client_id: {CLIENT_ID}, tenant: contoso, type: public, flow: device_code,
             authority: "https://127.0.0.1:{free_port()}/contoso"}}
""")
    (tmp_path / "users.yaml").write_text("# nobody yet\n")
    return config


def relay_cli(config, *args, stdin=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(config)], input=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)


def test_status_into_a_reader_that_went_away_exits_quietly(tmp_path):
    """`oauth-relay status | head -1`: no BrokenPipeError traceback, the exit of a SIGPIPE."""
    config = setup_files(tmp_path)
    assert relay_cli(config, "status").stdout.startswith("No accounts signed in yet.")
    read_end, write_end = os.pipe()
    os.close(read_end)                       # the reader is gone before anything is written
    try:
        result = relay_cli(config, "status", stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_login_journals_at_the_configured_level_on_stderr(tmp_path):
    info = relay_cli(setup_files(tmp_path, "info"), "login", "alice@contoso.com", "--no-browser")
    assert (info.returncode, info.stdout) == (1, UNREACHABLE)
    assert " info    sign-in started component=tokens.signin account=alice@contoso.com app=contoso " \
           "flow=device_code\n" in info.stderr, info.stderr
    assert "debug" not in info.stderr and "idp request" not in info.stderr, info.stderr

    debug = relay_cli(setup_files(tmp_path, "debug"), "login", "alice@contoso.com", "--no-browser")
    assert (debug.returncode, debug.stdout) == (1, UNREACHABLE)
    assert " debug   idp request failed component=tokens.http method=GET " in debug.stderr, debug.stderr


def test_login_journals_a_refresh_token_import_as_such(tmp_path):
    result = relay_cli(setup_files(tmp_path), "login", "alice@contoso.com", "--refresh-token-stdin",
                       stdin="0.AAAA-not-a-real-refresh-token\n")
    assert (result.returncode, result.stdout) == (1, UNREACHABLE)
    assert "sign-in started component=tokens.signin account=alice@contoso.com app=contoso " \
           "flow=refresh_token\n" in result.stderr, result.stderr
    assert "device_code" not in result.stderr
