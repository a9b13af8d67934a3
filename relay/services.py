"""What every session in a worker shares: config, users, tokens, TLS contexts, counters."""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import os
import threading
from typing import Dict, List, Optional, Tuple

from relay.config.models import Config, Users
from relay.local_auth import LocalAuthenticator
from relay.tls_local import server_context
from relay.upstream.connection import client_tls_context

# What Office 365 is known to offer, used until the upstream's own EHLO/CAPA has been seen.
# Deliberately short: promising less than the upstream has is safe, promising more is not.
CONSERVATIVE_CAPABILITIES = {
    "smtp": ("SIZE 36700160", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
    "pop3": ("TOP", "UIDL"),
    "imap": (),
}


class MailboxSessions:
    """Caps concurrent upstream sessions per mailbox (Office 365 allows about 20).

    Every listener has worker processes of its own, so with `directory` the count is shared by
    all of them: a session holds an flock on one of `limit` slot files of its key, and the
    kernel frees the slot when the session ends or its process dies. Without a directory (or
    when it cannot be used) the count is this process's only.
    """

    def __init__(self, limit: int, directory: Optional[str] = None):
        self.limit = limit
        self.directory = directory
        self._counts: Dict[str, int] = collections.Counter()
        self._held: Dict[str, List[int]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def acquire(self, mailbox: str) -> bool:
        key = mailbox.lower()
        with self._lock:
            if self.directory is not None:
                try:
                    fd = self._take_slot(key)
                except OSError:
                    fd = -1  # an unusable directory: count in this process only
                if fd is None:
                    return False
                if fd >= 0:
                    self._held[key].append(fd)
                    return True
            if self._counts[key] >= self.limit:
                return False
            self._counts[key] += 1
            return True

    def release(self, mailbox: str) -> None:
        key = mailbox.lower()
        with self._lock:
            if self._held.get(key):
                os.close(self._held[key].pop())  # closing releases the flock
                if not self._held[key]:
                    del self._held[key]
                return
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]

    def _take_slot(self, key: str) -> Optional[int]:
        """A locked slot file's descriptor, or None when all `limit` slots are taken."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        stem = os.path.join(self.directory, hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])
        for slot in range(self.limit):
            fd = os.open(f"{stem}.{slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
        return None


class ShuttingDown(Exception):
    """Thrown into a session that waits for its client before login when the worker stops."""


class CapabilityCache:
    """The upstream's capabilities per protocol, learned at each contact."""

    def __init__(self) -> None:
        self._learned: Dict[str, Tuple[str, ...]] = {}

    def get(self, protocol: str) -> Tuple[str, ...]:
        return self._learned.get(protocol, CONSERVATIVE_CAPABILITIES[protocol])

    def learn(self, protocol: str, capabilities: Tuple[str, ...]) -> None:
        if capabilities and protocol != "imap":
            self._learned[protocol] = tuple(capabilities)


class Services:
    def __init__(self, config: Config, users: Users, tokens, offload=None):
        self.config = config
        # Failed logins are counted per client address across every listener's workers.
        failures_dir = os.path.join(config.runtime_dir, "failures")
        self.authenticator = (LocalAuthenticator(users, config.auth, offload, failures_dir) if offload
                              else LocalAuthenticator(users, config.auth, failures_dir=failures_dir))
        self.tokens = tokens
        self.server_tls = server_context(config)
        self.upstream_tls = client_tls_context(config.upstream.ca_file)
        self.capabilities = CapabilityCache()
        self.sessions = MailboxSessions(config.limits.sessions_per_mailbox,
                                        os.path.join(config.runtime_dir, "sessions"))
        # Greenlets of sessions waiting for their client's next command before login: at the
        # end of a drain they are told to say goodbye rather than being cut off mid-air.
        self.waiting_before_login: set = set()

    def swap_users(self, users: Users) -> None:
        self.authenticator.swap_users(users)

    @property
    def users(self) -> Users:
        return self.authenticator.users

