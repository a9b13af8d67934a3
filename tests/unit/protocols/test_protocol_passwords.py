"""Awkward passwords through every login form of every protocol.

Each form must hand the runner the exact password, keep bytes pipelined after
the login for the upstream, and never show the password in a Trace.
"""

from __future__ import annotations

import base64
from typing import Callable, Dict, List, Tuple

import pytest
from protocol_transcripts import leaked_secrets

from relay.protocols import ImapMachine, Pop3Machine, SmtpMachine
from relay.protocols.base import Login, LoginResult, Pipe, Send, SessionContext, Trace
from relay.protocols.imap_syntax import quote, trailing_literal

USER = "alice@example.com"
PASSWORDS = [
    "correct horse battery",
    'say "cheese"',
    "back\\slash\\",
    "100%",
    "st*r*",
    "pässwörd€",
    "日本語のパスワード",
    " leading and trailing ",
    'all "of\\ them" % * ü {3}',
    "{5}",
    '"',
    "\\",
    "a+b/c==",
    "NIL",
]
TAIL = b"NEXT COMMAND\r\n"  # pipelined after the login: must reach Pipe.pending


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _plain(password: str) -> str:
    return _b64("\0%s\0%s" % (USER, password))


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def _imap_forms(password: str) -> Dict[str, bytes]:
    raw = password.encode("utf-8")
    forms = {
        "quoted": _line("a LOGIN %s %s" % (quote(USER), quote(password))),
        "literal": _line("a LOGIN %s {%d}" % (USER, len(raw))) + raw + b"\r\n",
        "literal+": _line("a LOGIN {%d+}" % len(USER))
        + _line(USER + " {%d+}" % len(raw))
        + raw
        + b"\r\n",
        "sasl-ir": _line("a AUTHENTICATE PLAIN " + _plain(password)),
        "sasl": _line("a AUTHENTICATE PLAIN") + _line(_plain(password)),
    }
    if " " not in password and not password.startswith('"') and not trailing_literal(raw):
        forms["atom"] = _line("a LOGIN %s %s" % (USER, password))
    return forms


def _pop3_forms(password: str) -> Dict[str, bytes]:
    return {
        "user-pass": _line("USER " + USER) + _line("PASS " + password),
        "sasl-ir": _line("AUTH PLAIN " + _plain(password)),
        "sasl": _line("AUTH PLAIN") + _line(_plain(password)),
    }


def _smtp_forms(password: str) -> Dict[str, bytes]:
    ehlo = _line("EHLO client.example.com")
    return {
        "plain-ir": ehlo + _line("AUTH PLAIN " + _plain(password)),
        "plain": ehlo + _line("AUTH PLAIN") + _line(_plain(password)),
        "login-ir": ehlo + _line("AUTH LOGIN " + _b64(USER)) + _line(_b64(password)),
        "login": ehlo + _line("AUTH LOGIN") + _line(_b64(USER)) + _line(_b64(password)),
    }


FORMS: Dict[str, Tuple[Callable, Callable[[str], Dict[str, bytes]]]] = {
    "imap": (ImapMachine, _imap_forms),
    "pop3": (Pop3Machine, _pop3_forms),
    "smtp": (SmtpMachine, _smtp_forms),
}
CASES = [
    (protocol, form, password)
    for protocol, (_, forms) in FORMS.items()
    for password in PASSWORDS
    for form in forms(password)
]


def _drive(protocol: str, data: bytes, byte_by_byte: bool) -> List:
    ctx = SessionContext(
        protocol, tls_active=True, starttls_offered=False, plaintext_auth_allowed=False
    )
    machine = FORMS[protocol][0](ctx)
    actions = machine.greeting()
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for chunk in chunks:
        actions += machine.receive(chunk)
    return actions + machine.login_result(LoginResult(True))


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["chunk", "bytes"])
@pytest.mark.parametrize("protocol,form,password", CASES)
def test_password_reaches_the_runner_intact(protocol, form, password, byte_by_byte):
    data = FORMS[protocol][1](password)[form] + TAIL
    actions = _drive(protocol, data, byte_by_byte)
    assert [a for a in actions if isinstance(a, Login)] == [Login(USER, password)]
    assert actions[-1] == Pipe(TAIL)
    traces = [a.line for a in actions if isinstance(a, Trace)]
    assert traces, "every client line is journalled"
    for trace in traces:
        assert leaked_secrets(trace, [password]) == [], trace


@pytest.mark.parametrize("password", PASSWORDS)
def test_imap_sync_literal_gets_one_continuation(password):
    data = _imap_forms(password)["literal"]
    sent = b"".join(a.data for a in _drive("imap", data, False) if isinstance(a, Send))
    assert sent.count(b"+ Ready for literal data\r\n") == 1
