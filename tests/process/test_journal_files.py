"""USR1 reopens the journal files of the master and every worker; the shipped logrotate works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from tests.process.helpers import REPO, wait_for



def test_usr1_after_the_log_was_moved_writes_a_new_file(relay_factory):
    relay = relay_factory(journal_file="log/relay.log")
    (relay.dir / "log").mkdir()
    relay.start()
    moved = relay.dir / "log" / "relay.log.1"
    os.rename(relay.dir / "log" / "relay.log", moved)
    relay.signal(signal.SIGUSR1)
    wait_for(lambda: "journal_reopened" in relay.journal(), 5, what="the master to reopen")
    for protocol in relay.ports:
        wait_for(lambda: relay.answers(protocol) and f"session_open listener={protocol}@" in relay.journal(), 5,
                 what=f"the {protocol} worker to write to the new file")
    assert "relay_starting" in moved.read_text() and "relay_starting" not in relay.journal()


def test_logrotate_with_the_shipped_file(relay_factory):
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.path.exists(logrotate):
        pytest.skip("logrotate is not installed (apt-get install -y logrotate)")
    relay = relay_factory(journal_file="log/relay.log")
    (relay.dir / "log").mkdir(mode=0o755)
    relay.start()
    shipped = (REPO / "logrotate" / "oauth-relay").read_text()
    assert "kill -USR1 0" not in shipped and '[ -s /run/oauth-relay/relay.pid ]' in shipped
    conf = relay.dir / "logrotate.conf"
    conf.write_text(shipped.replace("/var/log/oauth-relay", str(relay.dir / "log"))
                    .replace("/run/oauth-relay", str(relay.runtime_dir)))
    os.chmod(conf, 0o644)
    result = subprocess.run([logrotate, "-s", str(relay.dir / "logrotate.state"), "-f", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rotated = relay.dir / "log" / "relay.log.1"
    assert "relay_starting" in rotated.read_text()
    wait_for(lambda: "journal_reopened" in relay.journal(), 5, what="USR1 from postrotate")
    wait_for(lambda: relay.answers("smtp") and "session_open listener=smtp@" in relay.journal(), 5,
             what="a worker to write to the new file")
    assert oct((relay.dir / "log" / "relay.log").stat().st_mode & 0o777) == "0o640"


def test_logrotate_postrotate_is_harmless_without_a_relay(tmp_path):
    shipped = (REPO / "logrotate" / "oauth-relay").read_text()
    script = shipped.split("postrotate")[1].split("endscript")[0].replace("/run/oauth-relay", str(tmp_path))
    assert subprocess.run(["sh", "-c", script], timeout=10).returncode == 0
    (tmp_path / "relay.pid").write_text("")
    assert subprocess.run(["sh", "-c", script], timeout=10).returncode == 0
