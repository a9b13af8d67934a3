"""What every session in a worker shares: config, users, tokens, TLS contexts, counters."""

from __future__ import annotations

import collections
import threading
from typing import Dict, Tuple

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
    """Caps concurrent upstream sessions per mailbox (Office 365 allows about 20)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._counts: Dict[str, int] = collections.Counter()
        self._lock = threading.Lock()

    def acquire(self, mailbox: str) -> bool:
        key = mailbox.lower()
        with self._lock:
            if self._counts[key] >= self.limit:
                return False
            self._counts[key] += 1
            return True

    def release(self, mailbox: str) -> None:
        key = mailbox.lower()
        with self._lock:
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]


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
        self.authenticator = (LocalAuthenticator(users, config.auth, offload) if offload
                              else LocalAuthenticator(users, config.auth))
        self.tokens = tokens
        self.server_tls = server_context(config)
        self.upstream_tls = client_tls_context(config.upstream.ca_file)
        self.capabilities = CapabilityCache()
        self.sessions = MailboxSessions(config.limits.sessions_per_mailbox)

    def swap_users(self, users: Users) -> None:
        self.authenticator.swap_users(users)

    @property
    def users(self) -> Users:
        return self.authenticator.users

