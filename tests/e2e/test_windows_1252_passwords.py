"""Old Windows mail programs send a password with umlauts in Windows-1252, not UTF-8. The
relay reads it as the characters the user typed, so it matches what the admin set with
`oauth-relay user add`, on all three protocols."""

from __future__ import annotations

import base64

import pytest

from tests.e2e.pop3_support import RawPop3
from tests.e2e.smtp_support import RawSmtp
from tests.e2e.test_imap import RawImap

PASSWORD = "Passwört €5"
CP1252 = PASSWORD.encode("cp1252")


@pytest.fixture(scope="module")
def umlaut_user(relay):
    return relay.new_user(password=PASSWORD)


def test_imap_login_with_a_windows_1252_password(relay, bed, umlaut_user):
    with RawImap.open(relay, bed, "tls") as raw:
        reply = raw.command(b"a1", b"LOGIN " + umlaut_user.name.encode() + b' "' + CP1252 + b'"')
        assert reply[-1].startswith(b"a1 OK"), reply
        assert raw.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK")
        assert raw.command(b"a3", b"LOGOUT")[-1].startswith(b"a3 OK")


def test_pop3_pass_with_a_windows_1252_password(relay, bed, umlaut_user):
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        assert raw.line().startswith(b"+OK")
        assert raw.command("USER " + umlaut_user.name).startswith(b"+OK")
        raw.send(b"PASS " + CP1252 + b"\r\n")
        assert raw.line().startswith(b"+OK"), "PASS refused"
        assert raw.command("STAT").startswith(b"+OK")
        assert raw.command("QUIT").startswith(b"+OK")


def test_smtp_auth_plain_with_a_windows_1252_password(relay, bed, umlaut_user):
    with RawSmtp(relay.ports["smtp-tls"], bed.ssl_context()) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        response = base64.b64encode(b"\0" + umlaut_user.name.encode() + b"\0" + CP1252)
        assert raw.command(b"AUTH PLAIN " + response)[0] == 235
        assert raw.command(b"QUIT")[0] == 221
