"""The contract between the protocol state machines and the session runner.

Machines are sans-IO: the runner feeds them client bytes and events, and
carries out the actions they return, in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple, Union


@dataclass(frozen=True)
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Flush pending Sends, wrap the client socket in server TLS, then call
    machine.tls_started()."""


@dataclass(frozen=True)
class Login:
    """Check the local user, log in upstream, then call machine.login_result()."""

    username: str
    password: str

    def __repr__(self) -> str:
        # Actions end up in logs and test failure output: never show the password.
        return "Login(username=%r, password=<redacted>)" % (self.username,)


@dataclass(frozen=True)
class Pipe:
    """Switch to the byte pipe.

    `pending` holds client bytes received after the login command (pipelining);
    they must be forwarded to the upstream, never dropped.
    """

    pending: bytes


@dataclass(frozen=True)
class Close:
    """Close the client connection after flushing pending Sends."""

    reason: str


@dataclass(frozen=True)
class Trace:
    """One client protocol line for the full-debug journal, already redacted (none if empty).
    With `refusal`: a login the machine refused by itself, journaled at warning."""

    line: str
    refusal: str = ""


Action = Union[Send, StartTLS, Login, Pipe, Close, Trace]


class Failure(enum.Enum):
    BAD_CREDENTIALS = "bad_credentials"  # unknown user or wrong local password
    NOT_PERMITTED = "not_permitted"  # user may not use this protocol
    MAILBOX_REFUSED = "mailbox_refused"  # Office 365 refused the account that mailbox
    NEEDS_SIGNIN = "needs_signin"  # admin must run `oauth-relay login`
    UNAVAILABLE = "unavailable"  # identity provider or upstream down/throttled
    RELAY_SETUP = "relay_setup"  # the relay's own config for the account is broken (retried)
    TOO_MANY_SESSIONS = "too_many_sessions"  # per-mailbox cap reached
    SMTP_AUTH_DISABLED = "smtp_auth_disabled"  # Office 365 535 5.7.139
    IN_USE = "in_use"  # POP3 mailbox locked upstream
    UPSTREAM_PERMANENT = "upstream_permanent"  # POP3 [SYS/PERM] upstream: needs an admin, not a retry


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    failure: Optional[Failure] = None
    text: str = ""  # safe human text to include in the reply (may be "")
    capabilities: Tuple[str, ...] = ()  # IMAP: upstream post-login CAPABILITY atoms


@dataclass(frozen=True)
class SessionContext:
    protocol: str  # "imap" | "pop3" | "smtp"
    tls_active: bool  # True on implicit-TLS listeners from the start
    starttls_offered: bool  # listener security == "starttls"
    plaintext_auth_allowed: bool  # may this client log in without TLS?
    hostname: str = "localhost"
    upstream_capabilities: Tuple[str, ...] = ()  # learned from the upstream before login
    max_line: int = 8192
    max_literal: int = 65536  # IMAP LOGIN literals (a password can't be bigger)
    garbage_budget: int = 10  # bad commands before the machine says goodbye
    max_failed_logins: int = 3  # wrong passwords in one session before it is closed
