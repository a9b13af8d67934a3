"""POP3 before login: RFC 1939, 2449 (CAPA, RESP-CODES), 2595 (STLS), 5034 (SASL)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from . import sasl
from .base import Failure, LoginResult, SessionContext
from .lines import Line
from .machine import (
    AUTHZID_TEXT,
    IN_USE_TEXT,
    MAILBOX_REFUSED_TEXT,
    RELAY_SETUP_TEXT,
    NEEDS_SIGNIN_TEXT,
    REDACTED,
    SMTP_AUTH_DISABLED_TEXT,
    TOO_MANY_SESSIONS_TEXT,
    UNAVAILABLE_TEXT,
    UPSTREAM_PERMANENT_TEXT,
    Machine,
    auth_trace,
    failure_of,
    printable,
    with_detail,
)

# Commands of the TRANSACTION state (RFC 1939, 2449): they need a login first.
_TRANSACTION_COMMANDS = frozenset(
    [b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET", b"TOP", b"UIDL", b"LAST", b"UTF8"]
)
# Commands carrying secrets journal themselves, redacted.
_TRACED_BY_HANDLER = frozenset([b"PASS", b"AUTH", b"APOP"])
# Our own CAPA lines; upstream lines starting with these words are duplicates.
_OWN_CAPABILITIES = frozenset(
    ["USER", "SASL", "STLS", "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION"]
)

_FAILURE_REPLIES = {
    Failure.BAD_CREDENTIALS: "-ERR [AUTH] Authentication failed.",
    Failure.NOT_PERMITTED: "-ERR [AUTH] This account is not allowed to use POP3.",
    Failure.MAILBOX_REFUSED: "-ERR [AUTH] " + MAILBOX_REFUSED_TEXT,
    Failure.NEEDS_SIGNIN: "-ERR [AUTH] " + NEEDS_SIGNIN_TEXT,
    Failure.UNAVAILABLE: "-ERR [SYS/TEMP] " + UNAVAILABLE_TEXT,
    Failure.RELAY_SETUP: "-ERR [SYS/TEMP] " + RELAY_SETUP_TEXT,
    Failure.TOO_MANY_SESSIONS: "-ERR [SYS/TEMP] " + TOO_MANY_SESSIONS_TEXT,
    Failure.SMTP_AUTH_DISABLED: "-ERR [AUTH] " + SMTP_AUTH_DISABLED_TEXT,
    Failure.IN_USE: "-ERR [IN-USE] " + IN_USE_TEXT,
    Failure.UPSTREAM_PERMANENT: "-ERR [SYS/PERM] " + UPSTREAM_PERMANENT_TEXT,
}


class Pop3Machine(Machine):
    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        self._user: Optional[str] = None  # from USER, waiting for PASS
        self._in_sasl = False  # an AUTH PLAIN continuation is expected
        self._commands: Dict[bytes, Callable[[bytes], None]] = {
            b"CAPA": self._capa,
            b"STLS": self._stls,
            b"USER": self._user_command,
            b"PASS": self._pass_command,
            b"AUTH": self._auth,
            b"APOP": self._apop,
            b"QUIT": self._quit,
        }

    # ----- replies the engine asks for

    def _greeting_line(self) -> str:
        return "+OK OAuth Relay ready."

    def _timeout_line(self) -> str:
        return "-ERR Timeout, closing."

    def _goodbye_line(self) -> str:
        return "-ERR Too many bad commands, closing."

    def _too_many_failures_line(self) -> str:
        return "-ERR [AUTH] Too many failed logins, closing."

    def _shutdown_line(self) -> str:
        return "-ERR [SYS/TEMP] Server shutting down, try again later."

    def _reset_after_tls(self) -> None:
        self._user = None  # RFC 2595: back to a fresh AUTHORIZATION state
        self._in_sasl = False

    def _login_succeeded(self, result: LoginResult) -> None:
        self._send("+OK Logged in.")

    def _login_failed(self, result: LoginResult) -> None:
        self._send(with_detail(_FAILURE_REPLIES[failure_of(result)], result.text))

    # ----- input

    def _on_long_line(self, line: Line) -> None:
        self._in_sasl = False
        self._bad("-ERR Line too long")

    def _on_line(self, data: bytes) -> None:
        if self._in_sasl:
            self._in_sasl = False
            self._trace(REDACTED)
            self._sasl_answer(data)
            return
        verb, _, argument = data.partition(b" ")
        verb = verb.upper()
        handler = self._commands.get(verb)
        if handler is None:
            self._trace_unexpected(data)
            self._unknown(verb)
            return
        if verb not in _TRACED_BY_HANDLER:
            self._trace(printable(data))
        handler(argument)

    def _unknown(self, verb: bytes) -> None:
        if not verb:
            self._bad("-ERR Empty command")
        elif verb in _TRANSACTION_COMMANDS:
            self._bad("-ERR Please log in first")
        else:
            self._bad("-ERR Unknown command")

    # ----- commands

    def _capa(self, argument: bytes) -> None:
        self._send("+OK Capability list follows")
        for capability in self._capabilities():
            self._send(capability)
        self._send(".")

    def _capabilities(self) -> List[str]:
        lines = []
        if self.auth_allowed:
            lines += ["USER", "SASL PLAIN"]
        if self.starttls_available:
            lines.append("STLS")
        lines += ["RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION OAuth-Relay"]
        for line in self.ctx.upstream_capabilities:
            words = line.split()
            if words and words[0].upper() not in _OWN_CAPABILITIES:
                lines.append(line)
        return lines

    def _stls(self, argument: bytes) -> None:
        if not self.starttls_available:
            self._bad("-ERR STLS not available")
            return
        self._send("+OK Begin TLS negotiation")
        self._request_tls()

    def _user_command(self, argument: bytes) -> None:
        if not self._tls_ok():
            return
        name = sasl.credential_text(argument)
        if not name:
            self._bad("-ERR Syntax: USER name")
            return
        self._user = name
        self._send("+OK Send your password")

    def _pass_command(self, argument: bytes) -> None:
        self._trace("PASS " + REDACTED)
        if not self._tls_ok():
            return
        user, self._user = self._user, None
        if user is None:
            self._bad("-ERR Send USER first")
            return
        password = sasl.credential_text(argument)
        if not password:
            self._bad("-ERR Syntax: PASS password")
            return
        self._request_login(user, password)

    def _auth(self, argument: bytes) -> None:
        mechanism, _, initial = argument.partition(b" ")
        self._trace(auth_trace("AUTH", mechanism, initial))
        if not self._tls_ok():
            return
        if not mechanism:
            self._send("+OK Supported mechanisms follow")
            self._send("PLAIN")
            self._send(".")
        elif mechanism.upper() != b"PLAIN":
            self._send("-ERR Unsupported authentication mechanism")
        elif initial:
            self._sasl_answer(initial)
        else:
            self._send("+ ")
            self._in_sasl = True

    def _sasl_answer(self, answer: bytes) -> None:
        if sasl.is_cancel(answer):
            self._send("-ERR Authentication cancelled")
            return
        self._plain_login(answer, "-ERR ", "-ERR [AUTH] " + AUTHZID_TEXT)

    def _apop(self, argument: bytes) -> None:
        self._trace("APOP " + REDACTED)
        self._bad("-ERR APOP not supported; use USER and PASS")

    def _quit(self, argument: bytes) -> None:
        self._send("+OK OAuth Relay signing off.")
        self._close("client quit")

    # ----- small helpers

    def _tls_ok(self) -> bool:
        """Refuse credentials on a connection that policy wants encrypted."""
        if self.auth_allowed:
            return True
        hint = "; use STLS first" if self.starttls_available else ""
        self._send("-ERR [AUTH] TLS required" + hint)
        return False
