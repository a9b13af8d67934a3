"""TCP keepalive on both legs of a live session, as the kernel reports it (`ss -o`): a client or
an Office 365 connection that vanished without a FIN (NAT timeout, power loss) is found and
closed instead of holding a session (and a per-mailbox slot) until the idle timeout.
tests/unit/test_socket_tuning.py checks the socket options themselves."""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.pop3_support import RawPop3, plain
from tests.e2e.smtp_support import RawSmtp, plain_response
from tests.e2e.sockets import relay_sockets
from tests.e2e.test_imap import RawImap, assert_logged_in, quoted


@pytest.fixture(scope="module")
def user(relay):
    return relay.new_user(password="Keepalive-pass_42.x")


def imap_login(relay, bed, user):
    client = RawImap.open(relay, bed, "tls")
    assert_logged_in(client.command(b"a1", b"LOGIN " + quoted(user.name) + b" " + quoted(user.password)), b"a1")
    return client


def pop3_login(relay, bed, user):
    client = RawPop3(relay.ports["pop3-tls"], bed.ssl_context())
    assert client.line().startswith(b"+OK")
    assert client.command("AUTH PLAIN " + plain(user.name, user.password)).startswith(b"+OK")
    return client


def smtp_login(relay, bed, user):
    client = RawSmtp(relay.ports["smtp-tls"], bed.ssl_context())
    assert client.reply()[0] == 220
    assert client.command(b"EHLO legacy.example.test")[0] == 250
    assert client.command(b"AUTH PLAIN " + plain_response(user))[0] == 235
    return client


def timer_seconds(timer: str) -> float:
    """ss's "keepalive,1min59sec,0" -> 119.0 (also "59sec", "850ms", "1min")."""
    match = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?", timer.split(",")[1])
    assert match and any(match.groups()), timer
    minutes, seconds, millis = (int(group or 0) for group in match.groups())
    return minutes * 60 + seconds + millis / 1000


LOGINS = {"imap": imap_login, "pop3": pop3_login, "smtp": smtp_login}


def keepalive_armed(relay, **where):
    """The one relay socket matching `where` once its keepalive timer runs (right after
    traffic the retransmission timer may still show instead)."""
    found = relay_sockets(relay, **where)
    assert len(found) <= 1, found
    return found[0] if found and found[0].timer.startswith("keepalive,") else None


@pytest.mark.parametrize("protocol", LOGINS)
def test_both_legs_of_a_session_have_keepalive(relay, bed, user, protocol):
    upstream = (bed.upstream_host, bed.smtp_port if protocol == "smtp" else
                bed.imaps_port if protocol == "imap" else bed.pop3s_port)
    before = {sock.local for sock in relay_sockets(relay, peer=upstream)}
    client = LOGINS[protocol](relay, bed, user)
    try:
        local, port = client.sock.getsockname()
        client_leg = wait_for(lambda: keepalive_armed(relay, local=("127.0.0.1", relay.ports[f"{protocol}-tls"]),
                                                      peer=(local, port)),
                              10, "keepalive on the relay's socket to the client")
        legs = [sock for sock in relay_sockets(relay, peer=upstream) if sock.local not in before]
        assert len(legs) == 1, legs
        upstream_leg = wait_for(lambda: keepalive_armed(relay, local=legs[0].local, peer=upstream),
                                10, "keepalive on the relay's socket to the upstream")
        # The first probe after 120 s of silence (TCP_KEEPIDLE), not the kernel's 2 hours.
        for leg in (client_leg, upstream_leg):
            assert leg.state == "ESTAB" and 60 < timer_seconds(leg.timer) <= 120, leg
    finally:
        client.close()
