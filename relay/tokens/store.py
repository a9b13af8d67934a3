"""The token store: one AES-GCM sealed msal cache per account (or per app-only app).

Several processes (the IMAP, POP and SMTP workers, the CLI) share the files, so:
- every write happens under an flock on `<name>.lock`, after re-reading a file another
  process changed, and replaces the file atomically (temp file, fsync, rename, fsync dir):
  a kill -9 mid-write leaves the old file or the new one, never half of one;
- readers need no lock; they notice a rewrite by the file's inode, mtime and size.
Next to each token file sits `<name>.json`, a small record (state, times, last error) that
holds no secret and that `status` reads without the key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from typing import Iterator, List, Optional, Tuple
from urllib.parse import quote

from relay.atomic_file import write_atomically
from relay.tokens import keyfile
from relay.tokens.errors import TokenStoreError, TokenUnavailable

Generation = Optional[Tuple[int, int, int, int]]
TOKEN_SUFFIX, RECORD_SUFFIX, LOCK_SUFFIX = ".token", ".json", ".lock"
STALE_TEMP_SECONDS = 600


class LockTimeout(TokenUnavailable):
    """Another process held the account's lock for too long (a hung refresh)."""


def _generation(st: os.stat_result) -> Generation:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def account_key(account: str) -> str:
    return "user-" + quote(account.strip().lower(), safe="@.-_+")


def app_key(app_name: str) -> str:
    return "app-" + quote(app_name, safe="@.-_+")


def atomic_write(path: str, data: bytes) -> Generation:
    """Write a 0600 file so that readers see the old or the new content, whole."""
    return _generation(write_atomically(path, data))


def _make_private_dir(path: str) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


class TokenStore:
    def __init__(self, state_dir: str, key_file: Optional[str] = None, create: bool = True):
        self.state_dir = state_dir
        self.dir = os.path.join(state_dir, "tokens")
        self.key_path = key_file or os.path.join(state_dir, "token.key")
        self.key_configured = key_file is not None
        self._key: Optional[bytes] = None
        if create:
            self.prepare()

    # -- start-up checks ------------------------------------------------------------------
    def prepare(self) -> None:
        """Create what is missing; refuse loose permissions and a lost key."""
        _make_private_dir(self.state_dir)
        _make_private_dir(self.dir)
        if stat.S_IMODE(os.stat(self.dir).st_mode) & 0o077:
            raise TokenStoreError(f"token folder {self.dir} is open to group or others; "
                                  f"fix: chmod 700 {self.dir}")
        names = self.names()
        for name in names:
            if os.path.exists(self.token_path(name)):
                keyfile.check_private(self.token_path(name), "token file")
        self._key = self._load_key(any(os.path.exists(self.token_path(n)) for n in names))
        self._remove_stale_temps()

    def _load_key(self, have_tokens: bool) -> bytes:
        if os.path.exists(self.key_path):
            return keyfile.read_key(self.key_path)
        if self.key_configured:
            raise TokenStoreError(f"tokens.key_file {self.key_path} does not exist")
        if have_tokens:
            raise TokenStoreError(f"token key {self.key_path} is missing but {self.dir} holds "
                                  "token files; restore the key (or remove the files and sign in again)")
        return keyfile.create_key(self.key_path)

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = keyfile.read_key(self.key_path)
        return self._key

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".") and ".tmp-" in entry.name:
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(entry.path)

    # -- paths and listing ----------------------------------------------------------------
    def token_path(self, name: str) -> str:
        return os.path.join(self.dir, name + TOKEN_SUFFIX)

    def record_path(self, name: str) -> str:
        return os.path.join(self.dir, name + RECORD_SUFFIX)

    def lock_path(self, name: str) -> str:
        return os.path.join(self.dir, name + LOCK_SUFFIX)

    def names(self) -> List[str]:
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = set()
        for entry in entries:
            for suffix in (TOKEN_SUFFIX, RECORD_SUFFIX):
                if entry.endswith(suffix) and not entry.startswith("."):
                    found.add(entry[: -len(suffix)])
        return sorted(found)

    # -- token files ----------------------------------------------------------------------
    def generation(self, name: str) -> Generation:
        try:
            return _generation(os.stat(self.token_path(name)))
        except FileNotFoundError:
            return None

    def load(self, name: str) -> Tuple[Optional[str], Generation]:
        """The decrypted msal cache (None if there is none) and the generation it came from."""
        path = self.token_path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None, None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_mode & 0o077:
                keyfile.check_private(path, "token file")
            blob = handle.read()
        text = keyfile.unseal(self.key, blob, name, path).decode("utf-8")
        return text, _generation(st)

    def save(self, name: str, text: str) -> Generation:
        """Seal and write; call only while holding lock(name)."""
        return atomic_write(self.token_path(name), keyfile.seal(self.key, text.encode("utf-8"), name))

    # -- the cross-process lock -----------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout: float) -> Iterator[None]:
        """flock on a side file; polls so a gevent worker keeps serving while it waits."""
        fd = os.open(self.lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline, pause = time.monotonic() + timeout, 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"another process has been refreshing this account's token "
                                      f"for over {timeout:.0f} s")
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def busy(self, name: str) -> bool:
        """True while some process holds the lock (status shows `refreshing`)."""
        try:
            fd = os.open(self.lock_path(name), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    # -- the plain record -----------------------------------------------------------------
    def read_record(self, name: str) -> dict:
        try:
            with open(self.record_path(name), encoding="utf-8") as handle:
                data = json.load(handle)
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_record(self, name: str, record: dict) -> None:
        """Call while holding lock(name), like save()."""
        data = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.record_path(name), data)
