"""Tell the admin when an account starts or stops needing a sign-in (tokens.notify).

The command runs through /bin/sh in a background thread (a greenlet in gevent workers), so
a slow mail command never holds up a login; it is killed after NOTIFY_TIMEOUT seconds.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import List, Optional

from relay import journal

NOTIFY_TIMEOUT = 30.0


def _log():
    # Bound per call: a logger bound before journal.configure() would keep the old setup.
    return journal.get_logger(component="tokens.notify")


def _run(command: str, account: str, state: str, reason: str) -> None:
    env = dict(os.environ, OAUTH_RELAY_ACCOUNT=account, OAUTH_RELAY_STATE=state,
               OAUTH_RELAY_REASON=reason)
    try:
        done = subprocess.run(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=NOTIFY_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        _log().warning("notify command timed out", account=account, state=state,
                     seconds=NOTIFY_TIMEOUT)
        return
    except OSError as exc:
        _log().warning("notify command could not start", account=account, error=str(exc))
        return
    output = done.stdout.decode("utf-8", "replace").strip()[-500:]
    if done.returncode:
        _log().warning("notify command failed", account=account, state=state,
                     exit=done.returncode, output=output)
    else:
        _log().info("notify command ran", account=account, state=state)


class Notifier:
    def __init__(self, command: Optional[str]):
        self.command = command
        self._threads: List[threading.Thread] = []

    def __call__(self, account: str, state: str, reason: str) -> None:
        if not self.command:
            return
        thread = threading.Thread(target=_run, args=(self.command, account, state, reason),
                                  name="oauth-relay-notify", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def wait(self, timeout: float = NOTIFY_TIMEOUT + 5) -> None:
        """Wait for running commands (tests, and a clean exit of the CLI)."""
        for thread in list(self._threads):
            thread.join(timeout)
