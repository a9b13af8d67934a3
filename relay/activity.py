"""When each local user last logged in, per protocol, for `oauth-relay status`.

One tiny file per user and protocol under <state_dir>/activity/, replaced atomically, so
workers of different protocols never read-modify-write each other's data. A process writes
a given user+protocol at most once a minute: recording a login costs a dict lookup.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from typing import Dict, Tuple
from urllib.parse import quote, unquote

from relay.atomic_file import write_atomically

MIN_INTERVAL = 60.0
_last_written: Dict[Tuple[str, str, str], float] = {}
_lock = threading.Lock()


def _folder(state_dir: str) -> str:
    return os.path.join(state_dir, "activity")


def _file_name(user_name: str, protocol: str) -> str:
    # Protocol names hold no '~', so rpartition('~') splits even a user name that has one.
    return f"{quote(user_name, safe='@.-_+')}~{quote(protocol, safe='')}"


def record_login(state_dir: str, user_name: str, protocol: str) -> None:
    """Note a successful login; errors are swallowed (a full disk must not fail logins)."""
    key, now = (state_dir, user_name, protocol), time.monotonic()
    with _lock:
        last = _last_written.get(key)
        if last is not None and now - last < MIN_INTERVAL:
            return
        _last_written[key] = now
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    folder = _folder(state_dir)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # Not durable: losing the last minute's stamp in a crash is harmless.
        write_atomically(os.path.join(folder, _file_name(user_name, protocol)), (stamp + "\n").encode("ascii"),
                         durable=False)
    except OSError:
        pass


def last_logins(state_dir: str) -> Dict[str, Dict[str, str]]:
    """{user: {protocol: ISO 8601 UTC time}}."""
    found: Dict[str, Dict[str, str]] = {}
    try:
        entries = os.listdir(_folder(state_dir))
    except FileNotFoundError:
        return found
    for entry in sorted(entries):
        if entry.startswith(".") or "~" not in entry:
            continue
        user, _, protocol = entry.rpartition("~")
        try:
            with open(os.path.join(_folder(state_dir), entry), encoding="ascii") as handle:
                stamp = handle.read(64).strip()
        except (OSError, UnicodeDecodeError):
            continue
        if stamp:
            found.setdefault(unquote(user), {})[unquote(protocol)] = stamp
    return found
