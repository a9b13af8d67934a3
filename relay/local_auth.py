"""Checks a local user name and password: slow hash once, then a cache; failures throttled."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import os
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

from relay.atomic_file import write_atomically
from relay.config.models import AuthPolicy, User, Users
from relay.passwords import verify_password, verify_unknown_user
from relay.protocols.base import Failure


class FailureThrottle:
    """Counts failed logins per client address in a sliding window.

    With `directory`, every worker of every listener shares the count, so a guesser does not
    get `limit` tries per protocol and per worker: each failure appends a time stamp to the
    address's file (an O_APPEND write of one short line is atomic). Without a directory, or
    when it cannot be used, the count is this process's only.
    """

    COMPACT_ABOVE = 4096   # bytes; a longer file is rewritten with only the recent stamps
    SWEEP_EVERY = 100      # failures recorded by this process between removals of stale files

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.time,
                 directory: Optional[str] = None):
        self.limit, self.window, self.clock = limit, window, clock
        self.directory = directory
        self._failures: Dict[str, Deque[float]] = {}
        self._recorded = 0

    def blocked(self, address: str) -> bool:
        if self.directory is not None:
            try:
                return len(self._recent_on_disk(address)) >= self.limit
            except OSError:
                pass
        return len(self._recent(address)) >= self.limit

    def record(self, address: str) -> None:
        if self.directory is not None:
            try:
                self._append_on_disk(address)
                return
            except OSError:
                pass
        self._recent(address)
        self._failures.setdefault(address, collections.deque()).append(self.clock())

    def _recent(self, address: str) -> Deque[float]:
        stamps = self._failures.setdefault(address, collections.deque())
        horizon = self.clock() - self.window
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[address]
        return stamps

    def _path(self, address: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(address.encode("utf-8")).hexdigest()[:32])

    def _recent_on_disk(self, address: str) -> List[float]:
        return self._recent_in(self._path(address))

    def _recent_in(self, path: str) -> List[float]:
        """The file's stamps within the window; the file is removed when it has none."""
        try:
            with open(path, "rb") as stream:
                text = stream.read(self.COMPACT_ABOVE * 4)
        except FileNotFoundError:
            return []
        now = self.clock()
        stamps = []
        for line in text.split(b"\n"):
            try:
                stamp = float(line)
            except ValueError:
                continue          # an empty or torn line
            # A stamp far in the future is from a clock that was set back: ignore it.
            if now - self.window <= stamp <= now + self.window:
                stamps.append(stamp)
        if not stamps:
            with contextlib.suppress(OSError):
                os.unlink(path)   # the window has passed; don't keep a file per old guesser
        return stamps

    def _append_on_disk(self, address: str) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(address)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # The leading newline ends whatever line a crashed writer may have left unfinished.
            os.write(fd, b"\n%.3f\n" % self.clock())
            too_long = os.fstat(fd).st_size > self.COMPACT_ABOVE
        finally:
            os.close(fd)
        self._recorded += 1
        if self._recorded % self.SWEEP_EVERY == 0:
            self._sweep()
        if too_long:
            recent = self._recent_on_disk(address)
            write_atomically(path, b"".join(b"%.3f\n" % stamp for stamp in recent[-self.limit:]), 0o600,
                             durable=False)

    def _sweep(self) -> None:
        """Remove the files of addresses that have not failed within the window."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.startswith("."):     # not another process's temp file
                    self._recent_in(entry.path)


class CredentialCache:
    """Remembers passwords verified recently, as Dovecot's auth cache does.

    Entries are keyed by the stored hash, so a changed password misses at once; only
    successes are cached, so a wrong password always pays the slow hash. The cache holds a
    keyed digest of the password, never the password itself.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, size: int = 10000):
        self.ttl, self.clock, self.size = ttl, clock, size
        self._key = os.urandom(32)
        self._entries: Dict[Tuple[str, str], Tuple[bytes, float]] = {}

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    def hit(self, user: User, password: str) -> bool:
        entry = self._entries.get((user.name, user.password_hash))
        if entry is None or entry[1] < self.clock():
            return False
        return hmac.compare_digest(entry[0], self._digest(password))

    def store(self, user: User, password: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()  # a crude bound; the next logins simply hash again
        self._entries[(user.name, user.password_hash)] = (self._digest(password), self.clock() + self.ttl)


class LocalAuthenticator:
    """Decides whether a local login may proceed, and for which user.

    `offload` runs the slow hash; the gevent worker passes its thread pool so one login never
    stalls the event loop (hashlib's scrypt releases the GIL).
    """

    def __init__(self, users: Users, policy: AuthPolicy,
                 offload: Callable[..., bool] = lambda function, *args: function(*args),
                 failures_dir: Optional[str] = None):
        self.users = users
        self.policy = policy
        self.offload = offload
        self.cache = CredentialCache(policy.credential_cache_ttl)
        self.throttle = FailureThrottle(policy.max_failures, policy.failure_window, directory=failures_dir)

    def swap_users(self, users: Users) -> None:
        self.users = users

    def check(self, name: str, password: str, protocol: str, address: str) -> Tuple[Optional[User], Optional[Failure], str]:
        """Returns (user, None, "") on success, or (user-or-None, failure, reason for the journal)."""
        if self.throttle.blocked(address):
            return None, Failure.BAD_CREDENTIALS, "too many failed logins from this address"
        user = self.users.get(name)
        if user is None:
            # The dummy hash is made inside the offloaded call: making it is a slow hash too.
            self.offload(verify_unknown_user, password)
            self.throttle.record(address)
            return None, Failure.BAD_CREDENTIALS, "unknown local user"
        if not self.cache.hit(user, password):
            if not self.offload(verify_password, password, user.password_hash):
                self.throttle.record(address)
                return user, Failure.BAD_CREDENTIALS, "wrong local password"
            self.cache.store(user, password)
        if protocol not in user.protocols:
            return user, Failure.NOT_PERMITTED, f"{protocol} is not in this user's protocols"
        return user, None, ""
