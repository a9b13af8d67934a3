"""SMTP before login: RFC 5321, 4954 (AUTH), 3207 (STARTTLS), 2920, 3463 codes."""

from __future__ import annotations

from dataclasses import dataclass
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

# Mail commands: the upstream handles them once the client has logged in.
_NEEDS_AUTH = frozenset([b"MAIL", b"RCPT", b"DATA", b"BDAT", b"BURL", b"VRFY", b"EXPN", b"ETRN"])
_NOT_IMPLEMENTED = frozenset([b"TURN", b"ATRN", b"SEND", b"SOML", b"SAML", b"XCLIENT"])
_MECHANISMS = (b"PLAIN", b"LOGIN")

_TEMPORARY = "454 4.7.0 Temporary authentication failure: "
_FAILURE_REPLIES = {
    Failure.BAD_CREDENTIALS: "535 5.7.8 Authentication credentials invalid",
    Failure.NOT_PERMITTED: "535 5.7.8 This account is not allowed to use SMTP.",
    Failure.MAILBOX_REFUSED: "535 5.7.8 " + MAILBOX_REFUSED_TEXT,
    Failure.NEEDS_SIGNIN: "535 5.7.8 " + NEEDS_SIGNIN_TEXT,
    Failure.UNAVAILABLE: _TEMPORARY + UNAVAILABLE_TEXT,
    Failure.RELAY_SETUP: _TEMPORARY + RELAY_SETUP_TEXT,
    Failure.TOO_MANY_SESSIONS: _TEMPORARY + TOO_MANY_SESSIONS_TEXT,
    Failure.SMTP_AUTH_DISABLED: "535 5.7.139 " + SMTP_AUTH_DISABLED_TEXT,
    Failure.IN_USE: _TEMPORARY + IN_USE_TEXT,
    Failure.UPSTREAM_PERMANENT: "554 5.7.0 " + UPSTREAM_PERMANENT_TEXT,
}


@dataclass
class _AuthExchange:
    """An AUTH command waiting for `334` answers."""

    mechanism: bytes
    username: Optional[str] = None  # LOGIN: the first answer


class SmtpMachine(Machine):
    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        self._greeted_with: Optional[bytes] = None  # b"EHLO" or b"HELO"
        self._exchange: Optional[_AuthExchange] = None
        self._commands: Dict[bytes, Callable[[bytes], None]] = {
            b"EHLO": self._ehlo,
            b"HELO": self._helo,
            b"NOOP": self._ok,
            b"RSET": self._ok,
            b"HELP": self._help,
            b"QUIT": self._quit,
            b"STARTTLS": self._starttls,
            b"AUTH": self._auth,
        }

    # ----- replies the engine asks for

    def _greeting_line(self) -> str:
        return "220 %s ESMTP OAuth Relay" % self.ctx.hostname

    def _timeout_line(self) -> str:
        return "421 4.4.2 %s Timeout, closing" % self.ctx.hostname

    def _goodbye_line(self) -> str:
        return "421 4.7.0 Too many errors"

    def _too_many_failures_line(self) -> str:
        return "421 4.7.0 %s Too many failed authentications, closing" % self.ctx.hostname

    def _shutdown_line(self) -> str:
        return "421 4.3.2 %s Service shutting down, try again later" % self.ctx.hostname

    def _reset_after_tls(self) -> None:
        self._greeted_with = None  # RFC 3207: the client must EHLO again
        self._exchange = None

    def _login_succeeded(self, result: LoginResult) -> None:
        self._send("235 2.7.0 Authentication successful")

    def _login_failed(self, result: LoginResult) -> None:
        self._send(with_detail(_FAILURE_REPLIES[failure_of(result)], result.text))

    # ----- input

    def _on_long_line(self, line: Line) -> None:
        self._exchange = None
        self._bad("500 5.5.6 Line too long")

    def _on_line(self, data: bytes) -> None:
        if self._exchange is not None:
            self._trace(REDACTED)
            self._auth_answer(data)
            return
        verb, _, argument = data.partition(b" ")
        verb = verb.upper()
        handler = self._commands.get(verb)
        if handler is None:
            self._trace_unexpected(data)
            self._unknown(verb, argument)
            return
        if verb != b"AUTH":
            self._trace(printable(data))
        handler(argument.strip())

    def _unknown(self, verb: bytes, argument: bytes) -> None:
        if verb == b"BDAT":
            self._skip_bdat_chunk(argument)
        if verb in _NEEDS_AUTH:
            self._bad(self._auth_refusal() or "503 5.5.1 Authentication required first")
        elif verb in _NOT_IMPLEMENTED:
            self._bad("502 5.5.1 Command not implemented")
        else:
            self._bad("500 5.5.2 Command unrecognized")

    def _skip_bdat_chunk(self, argument: bytes) -> None:
        """A refused BDAT's chunk follows regardless (RFC 3030 pipelines it);
        it must not be read as commands."""
        size = argument.split(b" ", 1)[0]
        if size.isdigit():
            self._skip_size = int(size)

    def _auth_refusal(self) -> str:
        """The 530 for a connection that must be encrypted first, else ''."""
        if self.auth_allowed:
            return ""
        if self.starttls_available:
            return "530 5.7.0 Must issue a STARTTLS command first"
        return "530 5.7.0 Authentication requires an encrypted connection"

    # ----- commands

    def _ehlo(self, argument: bytes) -> None:
        if not argument:
            self._bad("501 5.5.4 Syntax: EHLO hostname")
            return
        self._greeted_with = b"EHLO"
        lines = [self.ctx.hostname] + self._extensions()
        for line in lines[:-1]:
            self._send("250-" + line)
        self._send("250 " + lines[-1])

    def _extensions(self) -> List[str]:
        extensions = [line for line in self.ctx.upstream_capabilities if _passes_through(line)]
        if self.starttls_available:
            extensions.append("STARTTLS")
        if self.auth_allowed:
            extensions.append("AUTH PLAIN LOGIN")
        return extensions

    def _helo(self, argument: bytes) -> None:
        if not argument:
            self._bad("501 5.5.4 Syntax: HELO hostname")
            return
        self._greeted_with = b"HELO"
        self._send("250 " + self.ctx.hostname)

    def _ok(self, argument: bytes) -> None:
        self._send("250 2.0.0 OK")

    def _help(self, argument: bytes) -> None:
        self._send("214 2.0.0 OAuth Relay: log in with AUTH, then send mail as usual")

    def _quit(self, argument: bytes) -> None:
        self._send("221 2.0.0 Bye")
        self._close("client quit")

    def _starttls(self, argument: bytes) -> None:
        if argument:
            self._bad("501 5.5.4 Syntax: STARTTLS")
        elif self._tls_active:
            self._bad("503 5.5.1 TLS already active")
        elif not self.ctx.starttls_offered:
            self._bad("502 5.5.1 STARTTLS not available")
        else:
            self._send("220 2.0.0 Ready to start TLS")
            self._request_tls()

    def _auth(self, argument: bytes) -> None:
        mechanism, _, initial = argument.partition(b" ")
        self._trace(auth_trace("AUTH", mechanism, initial))
        if self._greeted_with != b"EHLO":
            self._bad("503 5.5.1 EHLO first")
        elif self._auth_refusal():
            self._bad(self._auth_refusal())
        elif not mechanism:
            self._bad("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
        elif mechanism.upper() not in _MECHANISMS:
            self._send("504 5.5.4 Unrecognized authentication type")
        else:
            self._exchange = _AuthExchange(mechanism.upper())
            if initial:
                self._auth_answer(initial)
            else:
                self._send("334 " if self._exchange.mechanism == b"PLAIN" else
                           "334 " + sasl.USERNAME_CHALLENGE)

    def _auth_answer(self, answer: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        if sasl.is_cancel(answer):
            self._exchange = None
            self._send("501 5.7.0 Authentication cancelled")
        elif exchange.mechanism == b"PLAIN":
            self._exchange = None  # PLAIN takes one answer, whatever it holds
            self._plain_login(answer, "501 5.5.2 ", "535 5.7.8 " + AUTHZID_TEXT)
        else:
            try:
                self._login_answer(exchange, answer)
            except sasl.SaslError as error:
                self._exchange = None
                self._bad("501 5.5.2 %s" % error)

    def _login_answer(self, exchange: _AuthExchange, answer: bytes) -> None:
        text = sasl.decode_text(answer)
        if exchange.username is None:
            if not text:
                raise sasl.SaslError("Empty user name")
            exchange.username = text
            self._send("334 " + sasl.PASSWORD_CHALLENGE)
            return
        self._exchange = None
        self._request_login(exchange.username, text)


def _passes_through(extension: str) -> bool:
    """False for upstream EHLO lines the relay answers itself (AUTH, STARTTLS)."""
    words = extension.split()
    if not words:
        return False
    keyword = words[0].upper()
    return keyword not in ("AUTH", "STARTTLS") and not keyword.startswith("AUTH=")
