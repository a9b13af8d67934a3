"""`oauth-relay user add` without --password-stdin asks twice on the terminal, without echo.

The command runs on a pseudo-terminal (pty.fork: it is the child's controlling terminal, which
getpass opens as /dev/tty), and the test types at the prompts as an admin would.
"""

import os
import pty
import select
import sys
import time
from pathlib import Path

from relay.config import load_config
from relay.passwords import verify_password

REPO = Path(__file__).resolve().parents[2]
RELAY = """\
state_dir: state
apps:
  contoso: {client_id: 11111111-2222-3333-4444-555555555555, tenant: contoso.onmicrosoft.com, type: public}
"""
USERS = "# users, kept by the mail admin\n"


class Terminal:
    """A command on a pty: read what it writes, type lines at it."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:                        # the child: become the command at once
            try:
                os.chdir(REPO)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.output = b""

    def expect(self, text: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} on the terminal; it shows {self.output!r}"
            if not self._read(remaining):
                raise AssertionError(f"the command ended before {text!r}; it showed {self.output!r}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode("utf-8") + b"\r")

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            assert time.monotonic() < deadline, f"the command did not end; it shows {self.output!r}"
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def _read(self, timeout: float) -> bool:
        """More output into self.output; False at the end (Linux: EIO once the child is gone)."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:
            return False
        self.output += chunk
        return bool(chunk)


def setup(tmp_path):
    (tmp_path / "relay.yaml").write_text(RELAY)
    (tmp_path / "users.yaml").write_text(USERS)
    return tmp_path / "relay.yaml"


def user_add(config, name: str) -> Terminal:
    return Terminal([sys.executable, "-m", "relay", "user", "add", name, "--account", f"{name}@contoso.com",
                     "--config", str(config)])


def test_user_add_asks_twice_without_echo_and_stores_only_a_hash(tmp_path):
    config = setup(tmp_path)
    password = "typed at the prompt ü 42"
    terminal = user_add(config, "scanner")
    terminal.expect(b"Password: ")
    terminal.type(password)
    terminal.expect(b"Repeat password: ")
    terminal.type(password)
    assert terminal.finish() == 0, terminal.output
    assert b"Added scanner." in terminal.output
    assert password.encode("utf-8") not in terminal.output      # not echoed
    text = (tmp_path / "users.yaml").read_text()
    assert text.startswith(USERS) and password not in text
    _, users = load_config(str(config))
    assert verify_password(password, users.get("scanner").password_hash)


def test_a_mismatched_second_entry_is_refused_and_nothing_is_written(tmp_path):
    config = setup(tmp_path)
    terminal = user_add(config, "erp")
    terminal.expect(b"Password: ")
    terminal.type("first secret")
    terminal.expect(b"Repeat password: ")
    terminal.type("first secreT")
    assert terminal.finish() == 1, terminal.output
    assert b"The passwords do not match." in terminal.output
    assert b"Added" not in terminal.output
    assert (tmp_path / "users.yaml").read_text() == USERS
