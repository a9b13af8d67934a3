"""Frozen, typed snapshots of the configuration. A reload builds a new one or none at all."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

PROTOCOLS = ("imap", "pop3", "smtp")
JOURNAL_LEVELS = ("only-error", "warning", "info", "debug", "full-debug")
LISTENER_SECURITY = ("none", "starttls", "tls")
UPSTREAM_SECURITY = ("tls", "starttls")
APP_TYPES = ("public", "confidential")
FLOWS = ("device_code", "auth_code", "client_credentials")


@dataclass(frozen=True)
class JournalConfig:
    level: str = "info"
    file: Optional[str] = None          # None: stderr, which journald collects


@dataclass(frozen=True)
class TlsConfig:
    certificate: Optional[str] = None   # None with `auto`: a self-signed cert in state_dir
    key: Optional[str] = None

    @property
    def auto(self) -> bool:
        return self.certificate is None


@dataclass(frozen=True)
class UpstreamEndpoint:
    host: str
    port: int
    security: str                       # tls | starttls


@dataclass(frozen=True)
class UpstreamConfig:
    imap: UpstreamEndpoint
    pop3: UpstreamEndpoint
    smtp: UpstreamEndpoint
    ca_file: Optional[str] = None
    connect_timeout: float = 20.0
    # Office 365 POP answers a refused token only after ~9 s, so login waits are long.
    login_timeout: float = 30.0

    def for_protocol(self, protocol: str) -> UpstreamEndpoint:
        return getattr(self, protocol)


@dataclass(frozen=True)
class CloudConfig:
    name: str
    login_host: str                     # e.g. https://login.microsoftonline.com
    resource: str                       # scope prefix, e.g. https://outlook.office.com/
    app_only_resource: str              # client credentials: <this>.default


@dataclass(frozen=True)
class AppConfig:
    name: str
    client_id: str
    tenant: str
    type: str                           # public | confidential
    flow: str                           # device_code | auth_code | client_credentials
    client_secret_file: Optional[str] = None
    certificate_file: Optional[str] = None     # PEM holding the private key and certificate
    authority: Optional[str] = None     # override of https://<login host>/<tenant> (tests, sovereign clouds)
    redirect_port: int = 0              # loopback redirect for auth_code; 0 picks a free port

    @property
    def confidential(self) -> bool:
        return self.type == "confidential"


@dataclass(frozen=True)
class Listener:
    protocol: str
    host: str
    port: int
    security: str
    workers: int = 1

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return f"{self.protocol}@{self.address}"


@dataclass(frozen=True)
class AuthPolicy:
    # Clear-text logins are allowed only from these networks (loopback by default).
    plaintext_from: Tuple[ipaddress._BaseNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    failure_delay: float = 2.0          # seconds before a failed login is answered
    max_failures: int = 10              # per client address within failure_window
    failures_per_session: int = 3       # wrong passwords before one session is closed
    failure_window: float = 300.0
    credential_cache_ttl: float = 3600.0   # verified passwords are not re-hashed for this long

    def plaintext_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.plaintext_from)


@dataclass(frozen=True)
class Limits:
    preauth_timeout: float = 60.0
    idle_timeout: float = 1800.0        # authenticated sessions; never under 30 minutes
    sessions_per_mailbox: int = 20      # Office 365 allows about 20 IMAP sessions per mailbox
    drain_time: float = 30.0            # TERM and reload: how long open sessions may finish


@dataclass(frozen=True)
class TokenConfig:
    key_file: Optional[str] = None      # None: <state_dir>/token.key, made on first start
    refresh_ahead: float = 600.0        # refresh access tokens this long before they expire
    refresh_every: float = 86400.0      # refresh each account at least this often (AADSTS700082)
    notify: Optional[str] = None        # command run when an account needs sign-in again


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    protocols: Tuple[str, ...]
    account: str
    app: str
    mailbox: Optional[str] = None

    @property
    def target_mailbox(self) -> str:
        return self.mailbox or self.account


@dataclass(frozen=True)
class Users:
    """Local users by name. Names match without regard to letter case, as mail logins do:
    an old program that sends 'Scanner' finds the user 'scanner' (load_users refuses two
    names that differ only in case)."""

    path: str
    by_name: Dict[str, User] = field(default_factory=dict)

    def __post_init__(self) -> None:
        folded = {name.casefold(): user for name, user in self.by_name.items()}
        object.__setattr__(self, "_by_folded_name", folded)

    def get(self, name: str) -> Optional[User]:
        return self.by_name.get(name) or self._by_folded_name.get(name.casefold())


@dataclass(frozen=True)
class Config:
    path: str
    journal: JournalConfig
    state_dir: str
    runtime_dir: str
    users_file: str
    tls: TlsConfig
    cloud: CloudConfig
    upstream: UpstreamConfig
    apps: Dict[str, AppConfig]
    listeners: Tuple[Listener, ...]
    auth: AuthPolicy
    limits: Limits
    tokens: TokenConfig
    hostname: str = "localhost"
