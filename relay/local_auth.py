"""Checks a local user name and password: slow hash once, then a cache; failures throttled."""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import time
from typing import Callable, Deque, Dict, Optional, Tuple

from relay.config.models import AuthPolicy, User, Users
from relay.passwords import dummy_hash, verify_password
from relay.protocols.base import Failure


class FailureThrottle:
    """Counts failed logins per client address in a sliding window."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: Dict[str, Deque[float]] = {}

    def _recent(self, address: str) -> Deque[float]:
        stamps = self._failures.setdefault(address, collections.deque())
        horizon = self.clock() - self.window
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[address]
        return stamps

    def blocked(self, address: str) -> bool:
        return len(self._recent(address)) >= self.limit

    def record(self, address: str) -> None:
        self._recent(address)
        self._failures.setdefault(address, collections.deque()).append(self.clock())


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
                 offload: Callable[..., bool] = lambda function, *args: function(*args)):
        self.users = users
        self.policy = policy
        self.offload = offload
        self.cache = CredentialCache(policy.credential_cache_ttl)
        self.throttle = FailureThrottle(policy.max_failures, policy.failure_window)

    def swap_users(self, users: Users) -> None:
        self.users = users

    def check(self, name: str, password: str, protocol: str, address: str) -> Tuple[Optional[User], Optional[Failure], str]:
        """Returns (user, None, "") on success, or (user-or-None, failure, reason for the journal)."""
        if self.throttle.blocked(address):
            return None, Failure.BAD_CREDENTIALS, "too many failed logins from this address"
        user = self.users.get(name)
        if user is None:
            self.offload(verify_password, password, dummy_hash())
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
