"""The runner-facing interface, common to the three machines."""

from __future__ import annotations

import dataclasses
import random

import pytest
from protocol_transcripts import all_transcripts, describe, load, replay

from relay.protocols import MACHINES, ImapMachine, Pop3Machine, SmtpMachine, machine_for
from relay.protocols.base import (
    Close,
    Login,
    LoginResult,
    Pipe,
    Send,
    SessionContext,
    StartTLS,
    Trace,
)

LOGINS = {
    "imap": b"a LOGIN alice s3cr3t!\r\n",
    "pop3": b"USER alice\r\nPASS s3cr3t!\r\n",
    "smtp": b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3IzdCE=\r\n",
}
STARTTLS = {"imap": b"a STARTTLS\r\n", "pop3": b"STLS\r\n", "smtp": b"STARTTLS\r\n"}
JUNK = [b"", b" ", b"\x00\x01", b"\xff\xfe", b"* *", b"+", b"{5}", b"a {5+}", b"x" * 50,
        b"MAIL FROM:<a@b>", b"RETR 1", b"a SELECT INBOX", b"QUIT?", b"AUTH", b"PASS", b"USER",
        b"a AUTHENTICATE", b"a LOGIN", b"EHLO", b"HELO", b"TOP 1 2", b"DATA", b"a UID"]


def _ctx(protocol: str, **changes) -> SessionContext:
    ctx = SessionContext(
        protocol, tls_active=False, starttls_offered=True, plaintext_auth_allowed=True
    )
    return dataclasses.replace(ctx, **changes)


def _started(protocol: str, **changes):
    machine = machine_for(_ctx(protocol, **changes))
    machine.greeting()
    return machine


def test_machine_for_picks_the_protocol():
    assert isinstance(machine_for(_ctx("imap")), ImapMachine)
    assert isinstance(machine_for(_ctx("pop3")), Pop3Machine)
    assert isinstance(machine_for(_ctx("smtp")), SmtpMachine)


def test_value_objects_are_frozen_and_login_hides_the_password():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoginResult(True).ok = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        _ctx("imap").tls_active = True  # type: ignore[misc]
    assert "s3cr3t" not in repr(Login("alice", "s3cr3t"))


@pytest.mark.parametrize("protocol", sorted(MACHINES))
def test_events_out_of_turn_do_nothing(protocol):
    machine = _started(protocol)
    assert machine.login_result(LoginResult(True)) == []
    assert machine.tls_started() == []
    assert machine.connection_lost() == []
    assert machine.receive(b"anything\r\n") == []
    assert machine.timed_out() == []


@pytest.mark.parametrize("protocol", sorted(MACHINES))
def test_machine_is_inert_after_the_pipe(protocol):
    machine = _started(protocol)
    assert any(isinstance(a, Login) for a in machine.receive(LOGINS[protocol]))
    assert machine.login_result(LoginResult(True))[-1] == Pipe(b"")
    assert machine.receive(b"more\r\n") == []
    assert machine.timed_out() == []


@pytest.mark.parametrize("protocol", sorted(MACHINES))
def test_login_result_needs_no_more_input(protocol):
    """A failed login reply comes at once, without waiting for client bytes."""
    machine = _started(protocol)
    machine.receive(LOGINS[protocol])
    actions = machine.login_result(LoginResult(False))
    assert [type(a) for a in actions] == [Send]


@pytest.mark.parametrize("protocol", sorted(MACHINES))
def test_starttls_flushes_the_reply_before_the_handshake(protocol):
    machine = _started(protocol)
    actions = machine.receive(STARTTLS[protocol] + b"INJECTED\r\n")
    kinds = [type(a) for a in actions if not isinstance(a, Trace)]
    assert kinds == [Send, StartTLS]
    assert machine.receive(b"STILL PLAINTEXT\r\n") == []
    assert machine.tls_started() == []


@pytest.mark.parametrize("protocol", sorted(MACHINES))
@pytest.mark.parametrize("junk", JUNK)
def test_every_junk_line_gets_an_answer(protocol, junk):
    machine = _started(protocol, garbage_budget=1000)
    actions = machine.receive(junk + b"\r\n")
    assert any(isinstance(a, (Send, Close)) for a in actions)


@pytest.mark.parametrize("protocol", sorted(MACHINES))
def test_random_bytes_never_raise(protocol):
    generator = random.Random(protocol)
    alphabet = b"aA1 {}+*\"\\\r\n\x00\xc3\xa4=:<>"
    for _ in range(200):
        machine = _started(protocol, max_line=40, max_literal=20)
        for _ in range(20):
            chunk = bytes(generator.choice(alphabet) for _ in range(generator.randint(1, 30)))
            for action in machine.receive(chunk):
                if isinstance(action, Login):
                    machine.login_result(LoginResult(False))


@pytest.mark.parametrize("path", all_transcripts(), ids=lambda p: p.parent.name + "/" + p.stem)
def test_random_chunk_boundaries(path):
    transcript = load(path)
    reference = describe(replay(transcript, "lines"))
    for seed in range(5):
        assert describe(replay(transcript, "random:%d" % seed)) == reference
