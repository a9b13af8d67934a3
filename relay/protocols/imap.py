"""IMAP before login: RFC 9051/3501, 7888 (LITERAL+), 4959 (SASL-IR), 5530 codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from . import sasl
from .base import Failure, LoginResult, SessionContext
from .imap_syntax import (
    ImapSyntaxError,
    Literal,
    LiteralMarker,
    Segment,
    parse_astrings,
    quote,
    split_tag,
    trailing_literal,
)
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
    redact_unexpected,
    with_detail,
)

# Commands of the authenticated and selected states (RFC 9051 and extensions).
_NEEDS_LOGIN = frozenset(
    b"SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB XLIST"
    b" NAMESPACE STATUS APPEND IDLE ENABLE CHECK CLOSE UNSELECT EXPUNGE SEARCH"
    b" ESEARCH FETCH STORE COPY MOVE UID SORT THREAD GETQUOTA GETQUOTAROOT"
    b" SETQUOTA GETACL SETACL DELETEACL LISTRIGHTS MYRIGHTS GETMETADATA"
    b" SETMETADATA COMPRESS NOTIFY REPLACE".split()
)
# Commands whose arguments may arrive as literals we read (others are refused).
_LITERAL_COMMANDS = frozenset([b"LOGIN", b"ID"])
# Atoms the relay answers for itself; the upstream's never reach the client.
_PRE_LOGIN_ONLY = ("STARTTLS", "LOGINDISABLED")

_FAILURE_REPLIES = {
    Failure.BAD_CREDENTIALS: "NO [AUTHENTICATIONFAILED] Authentication failed.",
    Failure.NOT_PERMITTED: "NO [AUTHORIZATIONFAILED] This account is not allowed to use IMAP.",
    Failure.MAILBOX_REFUSED: "NO [AUTHORIZATIONFAILED] " + MAILBOX_REFUSED_TEXT,
    Failure.NEEDS_SIGNIN: "NO [AUTHENTICATIONFAILED] " + NEEDS_SIGNIN_TEXT,
    Failure.UNAVAILABLE: "NO [UNAVAILABLE] " + UNAVAILABLE_TEXT,
    Failure.RELAY_SETUP: "NO [UNAVAILABLE] " + RELAY_SETUP_TEXT,
    Failure.TOO_MANY_SESSIONS: "NO [UNAVAILABLE] " + TOO_MANY_SESSIONS_TEXT,
    Failure.SMTP_AUTH_DISABLED: "NO [AUTHENTICATIONFAILED] " + SMTP_AUTH_DISABLED_TEXT,
    Failure.IN_USE: "NO [INUSE] " + IN_USE_TEXT,
    Failure.UPSTREAM_PERMANENT: "NO [CONTACTADMIN] " + UPSTREAM_PERMANENT_TEXT,
}
_PRIVACY_REQUIRED = "NO [PRIVACYREQUIRED] Login requires an encrypted connection"


@dataclass(frozen=True)
class _Reply:
    """A tagged completion decided before the command was complete."""

    text: str
    is_garbage: bool


@dataclass
class _Command:
    """A command being assembled from lines and literals."""

    tag: str
    name: bytes
    segments: List[Segment]
    rejection: Optional[_Reply] = None
    literal_bytes: int = 0


class ImapMachine(Machine):
    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        self._command: Optional[_Command] = None  # waiting for a literal or its rest
        self._literal_size: Optional[int] = None  # literal bytes to read next
        self._sasl_tag: Optional[str] = None  # AUTHENTICATE waiting for its answer
        self._login_tag = ""
        self._handlers: Dict[bytes, Callable[[_Command], None]] = {
            b"CAPABILITY": self._capability,
            b"NOOP": self._noop,
            b"LOGOUT": self._logout,
            b"ID": self._id,
            b"STARTTLS": self._starttls,
            b"LOGIN": self._login,
            b"AUTHENTICATE": self._authenticate,
        }

    # ----- replies the engine asks for

    def _greeting_line(self) -> str:
        return "* OK [CAPABILITY %s] OAuth Relay ready" % self._capabilities()

    def _timeout_line(self) -> str:
        return "* BYE Autologout; idle for too long"

    def _goodbye_line(self) -> str:
        return "* BYE Too many invalid commands"

    def _too_many_failures_line(self) -> str:
        return "* BYE Too many failed logins"

    def _shutdown_line(self) -> str:
        return "* BYE Server shutting down"

    def _reset_after_tls(self) -> None:
        self._command = None
        self._literal_size = None
        self._sasl_tag = None

    def _login_succeeded(self, result: LoginResult) -> None:
        capabilities = [atom for atom in result.capabilities if _passes_through(atom)]
        code = "[CAPABILITY %s] " % " ".join(capabilities) if capabilities else ""
        self._send("%s OK %sLogged in" % (self._login_tag, code))

    def _login_failed(self, result: LoginResult) -> None:
        reply = with_detail(_FAILURE_REPLIES[failure_of(result)], result.text)
        self._send("%s %s" % (self._login_tag, reply))

    def _capabilities(self) -> str:
        atoms = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.auth_allowed:
            atoms.append("AUTH=PLAIN")
        if self.starttls_available:
            atoms.append("STARTTLS")
        if not self.auth_allowed:
            atoms.append("LOGINDISABLED")
        return " ".join(atoms)

    # ----- input: lines, literals, skipped literals

    def _step(self) -> bool:
        if self._literal_size is not None and self._command is not None:
            data = self._reader.next_block(self._literal_size)
            if data is None:
                return False
            self._literal_size = None
            self._command.segments.append(Literal(data))
            return True
        return super()._step()

    def _on_long_line(self, line: Line) -> None:
        tag = self._sasl_tag or (self._command.tag if self._command else _tag_of(line.data))
        self._sasl_tag = None
        self._command = None
        self._bad("%s BAD Line too long" % (tag or "*"))

    def _on_line(self, data: bytes) -> None:
        if self._sasl_tag is not None:
            self._sasl_answer(data)
        elif self._command is not None:
            self._command.segments.append(data)
            self._after_text(data)
        else:
            self._start_command(data)

    def _start_command(self, data: bytes) -> None:
        tagged = split_tag(data)
        if tagged is None:
            self._trace_unexpected(data)
            self._bad("* BAD Missing or invalid tag" if data else "* BAD Empty line")
            return
        tag, rest = tagged
        name, _, arguments = rest.partition(b" ")
        self._command = _Command(tag.decode("ascii"), name.upper(), [arguments])
        self._after_text(arguments)

    def _after_text(self, text: bytes) -> None:
        """The command's latest text ended: expect a literal, or run it."""
        marker = trailing_literal(text)
        if marker is None:
            self._finish_command()
        else:
            self._expect_literal(marker)

    def _expect_literal(self, marker: LiteralMarker) -> None:
        command = self._command
        assert command is not None
        if command.rejection is None:
            command.rejection = self._literal_refusal(command, marker.size)
        if command.rejection is None:
            command.literal_bytes += marker.size
            self._literal_size = marker.size
            if marker.synchronizing:
                self._send("+ Ready for literal data")
        elif marker.synchronizing:
            self._finish_command()  # no "+": the client will not send the literal
        elif marker.size > self.ctx.max_literal:
            self._abandon(command, "BAD [TOOBIG] Literal too big")
        else:
            self._skip_size = marker.size  # LITERAL+ data comes anyway
            command.segments.append(Literal(b""))  # its place, for the journal

    def _literal_refusal(self, command: _Command, size: int) -> Optional[_Reply]:
        if command.name not in _LITERAL_COMMANDS:
            return self._refusal_of(command.name, "BAD Unexpected literal")
        if command.name == b"LOGIN" and not self.auth_allowed:
            return _Reply(_PRIVACY_REQUIRED, is_garbage=False)
        if command.literal_bytes + size > self.ctx.max_literal:
            return _Reply("BAD [TOOBIG] Literal too big", is_garbage=True)
        return None

    def _abandon(self, command: _Command, reply: str) -> None:
        """We cannot find the end of this command: answer, say goodbye, close."""
        self._command = None
        self._trace(self._command_trace(command))
        self._send("%s %s" % (command.tag, reply))
        self._send("* BYE Literal too big")
        self._close("client literal too big")

    def _finish_command(self) -> None:
        command = self._command
        assert command is not None
        self._command = None
        self._trace(self._command_trace(command))
        reply = command.rejection
        handler = self._handlers.get(command.name)
        if reply is None and handler is not None:
            handler(command)
            return
        reply = reply or self._refusal_of(command.name, "BAD Unknown command")
        self._answer(command.tag, reply)

    def _refusal_of(self, name: bytes, otherwise: str) -> _Reply:
        if not name:
            return _Reply("BAD Missing command", is_garbage=True)
        if name in _NEEDS_LOGIN:
            return _Reply("NO [CLIENTBUG] Please log in first", is_garbage=True)
        return _Reply(otherwise, is_garbage=True)

    def _answer(self, tag: str, reply: _Reply) -> None:
        line = "%s %s" % (tag, reply.text)
        if reply.is_garbage:
            self._bad(line)
        else:
            self._send(line)

    # ----- commands without credentials

    def _capability(self, command: _Command) -> None:
        if self._refuse_arguments(command):
            return
        self._send("* CAPABILITY " + self._capabilities())
        self._send(command.tag + " OK CAPABILITY completed")

    def _noop(self, command: _Command) -> None:
        if not self._refuse_arguments(command):
            self._send(command.tag + " OK NOOP completed")

    def _logout(self, command: _Command) -> None:
        if self._refuse_arguments(command):
            return
        self._send("* BYE OAuth Relay logging out")
        self._send(command.tag + " OK LOGOUT completed")
        self._close("client logout")

    def _id(self, command: _Command) -> None:
        # RFC 2971: the client's own ID fields are of no use to the relay.
        self._send('* ID ("name" "OAuth Relay")')
        self._send(command.tag + " OK ID completed")

    def _starttls(self, command: _Command) -> None:
        if self._refuse_arguments(command):
            return
        if not self.starttls_available:
            self._bad(command.tag + " BAD STARTTLS not available")
            return
        self._send(command.tag + " OK Begin TLS negotiation now")
        self._request_tls()

    def _refuse_arguments(self, command: _Command) -> bool:
        if command.segments == [b""]:
            return False
        self._bad(command.tag + " BAD Unexpected arguments")
        return True

    # ----- commands with credentials

    def _login(self, command: _Command) -> None:
        if not self.auth_allowed:
            self._send(command.tag + " " + _PRIVACY_REQUIRED)
            return
        try:
            username, password = _login_arguments(command.segments)
        except ImapSyntaxError as error:
            self._bad("%s BAD %s" % (command.tag, error))
            return
        self._login_tag = command.tag
        self._request_login(username, password)

    def _authenticate(self, command: _Command) -> None:
        words = command.segments[0].split(b" ")
        mechanism, extra = words[0].upper(), words[1:]
        if not mechanism or len(extra) > 1:
            self._bad(command.tag + " BAD Syntax: AUTHENTICATE mechanism [initial-response]")
        elif not self.auth_allowed:
            self._send(command.tag + " " + _PRIVACY_REQUIRED)
        elif mechanism != b"PLAIN":
            self._send(command.tag + " NO [CANNOT] Unsupported authentication mechanism")
        elif extra:
            self._plain_response(command.tag, extra[0])
        else:
            self._send("+ ")
            self._sasl_tag = command.tag

    def _sasl_answer(self, answer: bytes) -> None:
        tag, self._sasl_tag = self._sasl_tag, None
        assert tag is not None
        self._trace(REDACTED)
        if sasl.is_cancel(answer):
            self._send(tag + " BAD Authentication cancelled")
        else:
            self._plain_response(tag, answer)

    def _plain_response(self, tag: str, response: bytes) -> None:
        self._login_tag = tag  # read only once a Login is under way
        self._plain_login(response, tag + " BAD ", tag + " NO [AUTHORIZATIONFAILED] " + AUTHZID_TEXT)

    # ----- journal

    def _command_trace(self, command: _Command) -> str:
        prefix = "%s %s" % (command.tag, printable(command.name))
        if command.name == b"LOGIN":
            return "%s %s" % (prefix, _login_trace(command.segments))
        if command.name == b"AUTHENTICATE":
            mechanism, _, initial = command.segments[0].partition(b" ")
            return auth_trace(prefix, mechanism, initial)
        arguments = b"".join(
            b"<literal>" if isinstance(part, Literal) else part for part in command.segments
        )
        line = "%s %s" % (prefix, printable(arguments)) if arguments else prefix
        return redact_unexpected(line)


def _login_arguments(segments: List[Segment]) -> Tuple[str, str]:
    values = parse_astrings(segments)
    if len(values) != 2:
        raise ImapSyntaxError("Syntax: LOGIN user password")
    return sasl.credential_text(values[0]), sasl.credential_text(values[1])


def _login_trace(segments: List[Segment]) -> str:
    """The user name if the arguments parse, never the password."""
    try:
        username, _ = _login_arguments(segments)
    except ImapSyntaxError:
        return REDACTED
    return "%s %s" % (quote(printable(username.encode("utf-8"))), REDACTED)


def _tag_of(head: bytes) -> Optional[str]:
    """The tag of an over-long line, if its first bytes show one."""
    tagged = split_tag(head) if b" " in head else None
    return tagged[0].decode("ascii") if tagged else None


def _passes_through(atom: str) -> bool:
    upper = atom.upper()
    return not upper.startswith("AUTH=") and upper not in _PRE_LOGIN_ONLY
