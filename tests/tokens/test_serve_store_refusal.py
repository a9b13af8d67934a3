"""`oauth-relay serve` refuses a token store that others can read: exit 78, and the fix.

78 (EX_CONFIG) is what systemd's RestartPreventExitStatus stops on, so a relay whose key or
token files leaked does not restart in a loop; the admin reads the chmod that fixes it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relay.master.state import pid_path
from relay.tokens.store import TokenStore, account_key
from tests.tokens.helpers import ACCOUNT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EX_CONFIG = 78


def serve(config_path: str) -> subprocess.CompletedProcess:
    # A relay that accepted the store would keep serving: the timeout fails the test then.
    return subprocess.run([sys.executable, "-m", "relay", "serve", "--config", config_path],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.mark.parametrize("which", ["key", "token file"])
def test_serve_refuses_a_store_readable_by_others(relay, which):
    relay.add_app(register=False)
    config = relay.config()
    store = TokenStore(config.state_dir)        # the key, as a first start makes it
    name = account_key(ACCOUNT)
    with store.lock(name, 5):
        store.save(name, "{}")
    path = store.key_path if which == "key" else store.token_path(name)
    what = "token key" if which == "key" else "token file"
    os.chmod(path, 0o644)
    result = serve(relay.path)
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr == (f"{relay.path}: tokens: {what} {path} is readable by group or others (mode 0644); "
                             f"refusing to use it. Fix: chmod 600 {path}\n")
    assert not os.path.exists(pid_path(config.runtime_dir))  # refused before it started anything
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)  # the relay does not "fix" it silently
