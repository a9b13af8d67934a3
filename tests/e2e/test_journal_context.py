"""One session's journal lines can be followed with grep: each names its listener, session, client
and (from the login on) the local user; at full-debug both sides' protocol lines are there, redacted.

One real login per protocol through the shared relay (full-debug) to the bed, without TLS on the
STARTTLS listener (plaintext is allowed from loopback), so that every line the client sends is
one the relay journals before login.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.pop3_support import RawPop3
from tests.e2e.smtp_support import RawSmtp, plain_response
from tests.e2e.test_imap import RawImap, quoted
from tests.e2e.test_imap_errors import relay_secrets_of

PASSWORD = "Journal-pass 42 secret"
WIRE = re.compile(r' wire .*dir=(\S+) .*line=("(?:[^"\\]|\\.)*"|\S+)')


def wire(line: str) -> Optional[Tuple[str, str]]:
    """(direction, protocol line) of a journaled wire event, None for any other event."""
    match = WIRE.search(line)
    if not match:
        return None
    text = match.group(2)
    if text.startswith('"'):
        text = re.sub(r'\\(.)', r"\1", text[1:-1])
    return match.group(1), text


@pytest.fixture(scope="module")
def user(relay):
    return relay.new_user(password=PASSWORD)


def imap_session(relay, bed, user) -> None:
    with RawImap.open(relay, bed, "plain") as client:
        assert client.command(b"a1", b"CAPABILITY")[-1].startswith(b"a1 OK")
        lines = client.command(b"a2", b"LOGIN " + quoted(user.name) + b" " + quoted(user.password))
        assert lines[-1].startswith(b"a2 OK"), lines
        assert client.command(b"a3", b"NOOP")[-1].startswith(b"a3 OK")
        assert client.command(b"a4", b"LOGOUT")[-1].startswith(b"a4 OK")


def pop3_session(relay, bed, user) -> None:
    with RawPop3(relay.ports["pop3-starttls"]) as client:
        assert client.line().startswith(b"+OK")
        assert client.command(f"USER {user.name}").startswith(b"+OK")
        assert client.command(f"PASS {user.password}").startswith(b"+OK")
        assert client.command("STAT").startswith(b"+OK 0 0")
        assert client.command("QUIT").startswith(b"+OK")


def smtp_session(relay, bed, user) -> None:
    with RawSmtp(relay.ports["smtp-starttls"]) as client:
        assert client.reply()[0] == 220
        assert client.command(b"EHLO legacy.example.test")[0] == 250
        assert client.command(b"AUTH PLAIN " + plain_response(user))[0] == 235
        assert client.command(b"NOOP")[0] == 250
        assert client.command(b"QUIT")[0] == 221


SESSIONS = {"imap": imap_session, "pop3": pop3_session, "smtp": smtp_session}
# How each protocol's login command looks in the journal: the secret part masked.
LOGIN_LINES = {"imap": 'a2 LOGIN "{name}" <redacted>', "pop3": "PASS <redacted>",
               "smtp": "AUTH PLAIN <redacted>"}


def session_lines(relay, protocol: str, user) -> List[str]:
    """All journal lines of `user`'s one session on the protocol's STARTTLS listener, once closed."""
    listener = f"{protocol}@127.0.0.1:{relay.ports[protocol + '-starttls']}"

    def closed():
        lines = relay.journal_text().splitlines()
        login = [line for line in lines if " login_ok " in line and f" user={user.name} " in line
                 and f" listener={listener} " in line]
        if not login:
            return None
        assert len(login) == 1, login
        session = re.search(r" session=(\S+)", login[0]).group(1)
        mine = [line for line in lines if f" session={session} " in line or line.endswith(f" session={session}")]
        return mine if any(" session_closed " in line for line in mine) else None

    return wait_for(closed, 10, f"the {protocol} session to be journaled as closed")


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_every_line_of_a_session_names_listener_client_and_from_login_on_the_user(relay, bed, user, protocol):
    SESSIONS[protocol](relay, bed, user)
    lines = session_lines(relay, protocol, user)
    listener = f"listener={protocol}@127.0.0.1:{relay.ports[protocol + '-starttls']}"
    missing = [line for line in lines if f" {listener} " not in line + " " or " client=127.0.0.1 " not in line + " "]
    assert not missing, "\n".join(missing)

    # From the login on (the relay's handling of the login command), every line names the user.
    wires = [wire(line) for line in lines]
    login_at = wires.index(("client>relay", LOGIN_LINES[protocol].format(name=user.name)))
    without_user = [line for line in lines[login_at + 1:] if f" user={user.name}" not in line]
    assert not without_user, "\n".join(without_user)
    assert any(" login_ok " in line for line in lines[login_at + 1:])
    assert all(f" user={user.name}" not in line for line in lines[:login_at]), "a user before the login?"

    # Both sides at full-debug: the client's lines and the relay's answers before login, the
    # relay's lines to Office 365 and its answers, then the pipe in both directions.
    directions = {direction for direction, _text in filter(None, wires)}
    assert directions >= {"client>relay", "relay>client", "relay>upstream", "upstream>relay",
                          "client>upstream", "upstream>client"}, directions
    assert ("relay>upstream", "<redacted>") in wires, "the relay's XOAUTH2 line to the upstream, masked"
    text = "\n".join(lines)
    secrets = [PASSWORD, plain_response(user).decode()] + relay_secrets_of(relay, user.account)
    assert not [secret for secret in secrets if secret in text]
