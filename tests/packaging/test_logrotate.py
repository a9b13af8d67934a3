"""The shipped logrotate file parses and matches the package (`logrotate -d`); the forced
rotation with a running relay (`logrotate -f`, USR1 reopen) is in pkg_lifecycle."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="needs logrotate")
def test_logrotate_debug_run(tmp_path):
    config = tmp_path / "oauth-relay"
    shutil.copy(REPO / "logrotate" / "oauth-relay", config)  # logrotate wants it not group-writable
    config.chmod(0o644)
    result = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(config)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error:" not in output, output
    assert "rotating pattern: /var/log/oauth-relay/*.log" in output, output
