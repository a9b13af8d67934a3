"""TLS session resumption upstream: a second login's upstream connection resumes the first's
session (no certificate exchange), through Dovecot (implicit TLS) and Postfix (STARTTLS).
POP3, not IMAP: the bed's Dovecot runs two imap-login processes with ticket keys of their
own, so whether an IMAP login resumes depends on which process accepts it.

The relay journals `upstream_tls ... tls_resumed=true|false` at debug for every upstream TLS
handshake; the harness runs the relay at full-debug. A relay of this module's own: its session
cache must not hold sessions from before another test restarted Dovecot.
"""

import re
from typing import List

import pytest

from relay.upstream import connection
from tests.e2e.harness import Relay
from tests.e2e.pop3_support import RawPop3, plain
from tests.e2e.smtp_support import RawSmtp, plain_response
from tests.support import wait_for


@pytest.fixture(scope="module")
def relay(bed, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("resumption"))
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def user(relay):
    return relay.new_user(password="resume pass")


def _handshakes(relay, user, offset: int) -> List[str]:
    """tls_resumed of each upstream handshake of `user` journaled after `offset`."""
    lines = [line for line in relay.journal_text()[offset:].splitlines()
             if " upstream_tls " in line and f"user={user.name} " in line]
    return [re.search(r"tls_resumed=(\w+)", line).group(1) for line in lines]


def _pop3_login(relay, bed, user) -> None:
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        assert raw.line().startswith(b"+OK")
        assert raw.command("AUTH PLAIN " + plain(user.name, user.password)).startswith(b"+OK")
        assert raw.command("QUIT").startswith(b"+OK")


def _smtp_login(relay, bed, user) -> None:
    with RawSmtp(relay.ports["smtp-tls"], bed.ssl_context()) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        assert raw.command(b"AUTH PLAIN " + plain_response(user))[0] == 235
        assert raw.command(b"QUIT")[0] == 221


@pytest.mark.parametrize("login", [_pop3_login, _smtp_login], ids=["pop3-dovecot", "smtp-starttls-postfix"])
def test_the_second_login_resumes_the_upstream_tls_session(relay, bed, user, login):
    offset = len(relay.journal_text())
    for _ in range(2):
        login(relay, bed, user)
    wait_for(lambda: len(_handshakes(relay, user, offset)) >= 2, 10, "two upstream handshakes journaled")
    # The first may be resumed too (an earlier test's session); the second must be.
    assert _handshakes(relay, user, offset)[1] == "true", _handshakes(relay, user, offset)


def test_a_session_the_server_no_longer_knows_falls_back_to_a_full_handshake(relay, bed, user):
    """A restarted Dovecot has new ticket keys: the relay's cached session is refused, the
    handshake goes on in full and the login works. The relay offers a refused session once more
    (connection.KEEP_REFUSED), then takes the newest, and the next login resumes; where reading
    a session leaks (this Python, if READ_INTERVAL is set) not before READ_INTERVAL is over."""
    _pop3_login(relay, bed, user)
    bed.dovecot.stop()
    bed.dovecot.start()
    offset = len(relay.journal_text())
    for _ in range(3):
        _pop3_login(relay, bed, user)
    wait_for(lambda: len(_handshakes(relay, user, offset)) >= 3, 10, "three upstream handshakes journaled")
    expected = ["false", "false", "false"] if connection.READ_INTERVAL > 60 else ["false", "false", "true"]
    assert _handshakes(relay, user, offset) == expected
