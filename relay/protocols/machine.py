"""The engine the IMAP, POP3 and SMTP machines share.

It owns the phases (reading commands, waiting for a login result or a TLS
handshake, piped, closed), the line reader, the garbage budget and the action
queue. Subclasses supply the protocol: its replies and its commands.
"""

from __future__ import annotations

import enum
import re
from typing import List

from . import sasl
from .base import (
    Action,
    Close,
    Failure,
    Login,
    LoginResult,
    Pipe,
    SessionContext,
    Send,
    StartTLS,
    Trace,
)
from .lines import Line, LineReader

REDACTED = "<redacted>"
LONG_LINE_TRACE = "<over-long line discarded>"

NEEDS_SIGNIN_TEXT = (
    "The relay has no valid Office 365 sign-in for this account;"
    " the administrator must run 'oauth-relay login'."
)
SMTP_AUTH_DISABLED_TEXT = "SMTP AUTH is disabled for this mailbox or tenant in Office 365."
UNAVAILABLE_TEXT = "Office 365 is unavailable right now; try again later."
RELAY_SETUP_TEXT = ("The relay's configuration for this account has a problem; the administrator must"
                    " look at the relay's journal.")
TOO_MANY_SESSIONS_TEXT = "Too many open sessions for this mailbox; try again later."
IN_USE_TEXT = "The mailbox is in use by another session; try again later."
MAILBOX_REFUSED_TEXT = "Office 365 refused this account access to the mailbox."
UPSTREAM_PERMANENT_TEXT = "Office 365 reports a permanent problem with this mailbox; ask the administrator."
AUTHZID_TEXT = "Logging in as another user is not supported."

# A misdirected secret (say `PASS x` sent to IMAP) must not reach the journal
# either: whatever follows one of these words in an unexpected line is hidden.
_SECRET_KEYWORDS = re.compile(r"(?i)(?:^|\s)(LOGIN|AUTHENTICATE|AUTH|PASS|APOP)(?=\s)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")

# Failures that mean "wrong password or user" and so count towards closing a session that
# keeps guessing; an identity provider that is down is not the client's fault.
_GUESSING_FAILURES = frozenset([Failure.BAD_CREDENTIALS, Failure.NOT_PERMITTED])


class Phase(enum.Enum):
    READING = "reading"  # interpreting client commands
    WAITING_LOGIN = "waiting_login"  # Login sent; client bytes are only buffered
    WAITING_TLS = "waiting_tls"  # StartTLS sent; plaintext is only buffered
    PIPED = "piped"
    CLOSED = "closed"


def printable(data: bytes) -> str:
    """A client line as journal text, control characters masked."""
    return _UNPRINTABLE.sub("?", data.decode("utf-8", errors="replace"))


def redact_unexpected(text: str) -> str:
    """Cut what follows a secret-bearing keyword in a line we did not expect."""
    match = _SECRET_KEYWORDS.search(text)
    if match is None:
        return text
    return text[: match.end()] + " " + REDACTED


def auth_trace(command: str, mechanism: bytes, initial: bytes) -> str:
    """An AUTH / AUTHENTICATE command as journal text: its mechanism, never its initial response."""
    words = [command, printable(mechanism), REDACTED if initial else ""]
    return " ".join(word for word in words if word)


def failure_of(result: LoginResult) -> Failure:
    return result.failure or Failure.BAD_CREDENTIALS


def with_detail(text: str, detail: str) -> str:
    """Append the runner's human text, flattened so it cannot break a reply line."""
    detail = " ".join(_UNPRINTABLE.sub(" ", detail).split())[:200]
    return "%s %s" % (text, detail) if detail else text


class Machine:
    """Bytes in, actions out. See relay.protocols.base for the actions."""

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._reader = LineReader(ctx.max_line)
        self._tls_active = ctx.tls_active
        self._phase = Phase.READING
        self._bad_commands = 0
        self._failed_logins = 0
        self._skip_size = 0  # data of a refused command (IMAP LITERAL+, SMTP BDAT) to drop
        self._actions: List[Action] = []

    # ----- the runner's interface

    def greeting(self) -> List[Action]:
        self._send(self._greeting_line())
        return self._flush()

    def receive(self, data: bytes) -> List[Action]:
        if self._phase in (Phase.PIPED, Phase.CLOSED):
            return []
        self._reader.feed(data)
        return self._drain()

    def tls_started(self) -> List[Action]:
        if self._phase is not Phase.WAITING_TLS:
            return []
        # Bytes that came with or after STARTTLS were sent in plaintext and
        # must not run as commands inside TLS (CVE-2011-0411).
        self._reader.clear()
        self._skip_size = 0
        self._tls_active = True
        self._phase = Phase.READING
        self._reset_after_tls()
        return self._flush()

    def login_result(self, result: LoginResult) -> List[Action]:
        if self._phase is not Phase.WAITING_LOGIN:
            return []
        if result.ok:
            self._login_succeeded(result)
            self._actions.append(Pipe(self._reader.take_buffered()))
            self._phase = Phase.PIPED
            return self._flush()
        self._phase = Phase.READING
        self._login_failed(result)
        if failure_of(result) in _GUESSING_FAILURES:
            self._failed_logins += 1
            if self._failed_logins >= self.ctx.max_failed_logins:
                self._send(self._too_many_failures_line())
                self._close("too many failed logins")
                return self._flush()
        return self._drain()

    def timed_out(self) -> List[Action]:
        if self._phase in (Phase.PIPED, Phase.CLOSED):
            return []
        self._send(self._timeout_line())
        self._close("pre-login time limit reached")
        return self._flush()

    def shutting_down(self) -> List[Action]:
        """The relay stops while this client has not logged in: say so in the protocol's
        words (a client may retry at once elsewhere) and close. Nothing once it is piped."""
        if self._phase in (Phase.PIPED, Phase.CLOSED):
            return []
        self._send(self._shutdown_line())
        self._close("relay shutting down")
        return self._flush()

    def connection_lost(self) -> List[Action]:
        self._phase = Phase.CLOSED
        return []

    # ----- policy

    @property
    def auth_allowed(self) -> bool:
        return self._tls_active or self.ctx.plaintext_auth_allowed

    @property
    def starttls_available(self) -> bool:
        return self.ctx.starttls_offered and not self._tls_active

    # ----- helpers for the protocols

    def _drain(self) -> List[Action]:
        while self._phase is Phase.READING and self._step():
            pass
        return self._flush()

    def _step(self) -> bool:
        """Handle one unit of input; False when the buffer has none."""
        if self._skip_size:
            skipped = self._reader.discard(self._skip_size)
            self._skip_size -= skipped
            return skipped > 0
        line = self._reader.next_line()
        if line is None:
            return False
        if line.too_long:
            self._trace(LONG_LINE_TRACE)
            self._on_long_line(line)
        else:
            self._on_line(line.data)
        return True

    def _send(self, text: str) -> None:
        self._actions.append(Send(text.encode("utf-8") + b"\r\n"))

    def _trace(self, text: str) -> None:
        self._actions.append(Trace(text))

    def _trace_unexpected(self, data: bytes) -> None:
        self._trace(redact_unexpected(printable(data)))

    def _bad(self, reply: str) -> None:
        """Answer a bad command; past the budget, say goodbye and close."""
        self._send(reply)
        self._bad_commands += 1
        if self._bad_commands >= self.ctx.garbage_budget:
            self._send(self._goodbye_line())
            self._close("too many bad commands")

    def _plain_login(self, response: bytes, malformed: str, other_identity: str) -> None:
        """Log in with a SASL PLAIN response; answer `malformed` + the reason to one that does
        not decode (a bad command), `other_identity` to one that names another user."""
        try:
            credentials = sasl.decode_plain(response)
        except sasl.SaslError as error:
            self._bad("%s%s" % (malformed, error))
            return
        if credentials.asks_for_other_identity:
            self._actions.append(Trace("", refusal="asked to log in as another user (SASL authzid)"))
            self._send(other_identity)
            return
        self._request_login(credentials.authcid, credentials.password)

    def _request_login(self, username: str, password: str) -> None:
        self._actions.append(Login(username, password))
        self._phase = Phase.WAITING_LOGIN

    def _request_tls(self) -> None:
        self._actions.append(StartTLS())
        self._phase = Phase.WAITING_TLS

    def _close(self, reason: str) -> None:
        self._actions.append(Close(reason))
        self._phase = Phase.CLOSED

    def _flush(self) -> List[Action]:
        """Return the queued actions, neighbouring Sends joined into one write."""
        actions: List[Action] = []
        for action in self._actions:
            previous = actions[-1] if actions else None
            if isinstance(action, Send) and isinstance(previous, Send):
                actions[-1] = Send(previous.data + action.data)
            else:
                actions.append(action)
        self._actions = []
        return actions

    # ----- what each protocol supplies

    def _greeting_line(self) -> str:
        raise NotImplementedError

    def _timeout_line(self) -> str:
        raise NotImplementedError

    def _goodbye_line(self) -> str:
        raise NotImplementedError

    def _too_many_failures_line(self) -> str:
        raise NotImplementedError

    def _shutdown_line(self) -> str:
        raise NotImplementedError

    def _on_line(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_long_line(self, line: Line) -> None:
        raise NotImplementedError

    def _login_succeeded(self, result: LoginResult) -> None:
        raise NotImplementedError

    def _login_failed(self, result: LoginResult) -> None:
        raise NotImplementedError

    def _reset_after_tls(self) -> None:
        raise NotImplementedError
