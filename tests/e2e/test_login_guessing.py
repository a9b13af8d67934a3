"""A connection that keeps guessing passwords is closed after the third wrong one (the shipped
`auth.failures_per_session`), with each protocol's own goodbye, and the journal says why.
A right password within the limit still logs in: the count is per connection, not a lockout."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib

import pytest

from tests.e2e.harness import Relay
from tests.e2e.pop3_support import RawPop3, plain
from tests.e2e.test_imap import RawImap


@pytest.fixture(scope="module")
def guessed(relay):
    """A user whose wrong passwords the tests send, and the journal's length before them."""
    return relay.new_user(password="right-password")


def _close_reasons(relay, mark: int) -> list:
    return [line for line in relay.journal_text()[mark:].splitlines()
            if "session_close" in line and "too many failed logins" in line]


def test_imap_third_wrong_password_gets_bye_and_close(relay, guessed, bed):
    mark = len(relay.journal_text())
    with RawImap.open(relay, bed, "tls") as raw:
        for tag in (b"a1", b"a2"):
            assert raw.command(tag, b"LOGIN " + guessed.name.encode() + b" wrong") == [
                tag + b" NO [AUTHENTICATIONFAILED] Authentication failed."]
        assert raw.command(b"a3", b"LOGIN " + guessed.name.encode() + b" wrong") == [
            b"a3 NO [AUTHENTICATIONFAILED] Authentication failed."]
        assert raw.line() == b"* BYE Too many failed logins"
        assert raw.closed()
    assert len(_close_reasons(relay, mark)) == 1


def test_imaplib_right_password_after_two_wrong_ones_logs_in(relay, guessed, bed):
    with imaplib.IMAP4_SSL("127.0.0.1", relay.ports["imap-tls"], ssl_context=bed.ssl_context()) as client:
        for _ in range(2):
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                client.login(guessed.name, "wrong")
        assert client.login(guessed.name, guessed.password)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"


def test_pop3_third_wrong_password_closes(relay, guessed, bed):
    mark = len(relay.journal_text())
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        assert raw.line().startswith(b"+OK")
        for _ in range(2):
            assert raw.command("USER " + guessed.name).startswith(b"+OK")
            assert raw.command("PASS wrong") == b"-ERR [AUTH] Authentication failed."
        assert raw.command("AUTH PLAIN " + plain(guessed.name, "wrong")) == b"-ERR [AUTH] Authentication failed."
        assert raw.line() == b"-ERR [AUTH] Too many failed logins, closing."
        assert raw.closed()
    assert len(_close_reasons(relay, mark)) == 1


def test_poplib_right_password_after_two_wrong_ones_logs_in(relay, guessed, bed):
    client = poplib.POP3_SSL("127.0.0.1", relay.ports["pop3-tls"], context=bed.ssl_context())
    try:
        for _ in range(2):
            client.user(guessed.name)
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
                client.pass_("wrong")
        client.user(guessed.name)
        assert client.pass_(guessed.password).startswith(b"+OK")
        assert client.stat()[0] >= 0
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()


def test_smtplib_third_wrong_password_gets_421(relay, guessed, bed):
    mark = len(relay.journal_text())
    client = smtplib.SMTP_SSL("127.0.0.1", relay.ports["smtp-tls"], context=bed.ssl_context(), timeout=30)
    try:
        client.ehlo("legacy.example.test")
        wrong = base64.b64encode(b"\0" + guessed.name.encode() + b"\0wrong").decode()
        for _ in range(2):
            assert client.docmd("AUTH", "PLAIN " + wrong) == (535, b"5.7.8 Authentication credentials invalid")
        assert client.docmd("AUTH", "PLAIN " + wrong) == (535, b"5.7.8 Authentication credentials invalid")
        code, text = client.getreply()
        assert code == 421 and b"Too many failed authentications" in text
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()
    assert len(_close_reasons(relay, mark)) == 1


@pytest.fixture(scope="module")
def strict_relay(bed, tmp_path_factory):
    """The shipped per-address lockout, lowered to 3 failures so the test stays short."""
    instance = Relay(bed, tmp_path_factory.mktemp("relay-strict"), auth={"max_failures": 3})
    try:
        yield instance.start()
    finally:
        instance.stop()


def test_failures_on_one_protocol_lock_the_address_out_of_the_others(strict_relay, bed):
    """Each listener runs in its own worker process; the count per address is still one."""
    user = strict_relay.new_user(password="right-password")
    mark = len(strict_relay.journal_text())
    with RawImap.open(strict_relay, bed, "tls") as raw:
        for tag in (b"a1", b"a2"):
            assert raw.command(tag, b"LOGIN " + user.name.encode() + b" wrong")[-1].startswith(tag + b" NO")
    client = smtplib.SMTP_SSL("127.0.0.1", strict_relay.ports["smtp-tls"], context=bed.ssl_context(), timeout=30)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(user.name, "wrong")
    client.close()
    # The third failure was on SMTP: now even the right password is refused on POP3.
    with RawPop3(strict_relay.ports["pop3-tls"], bed.ssl_context()) as raw:
        assert raw.line().startswith(b"+OK")
        assert raw.command("USER " + user.name).startswith(b"+OK")
        assert raw.command("PASS right-password") == b"-ERR [AUTH] Authentication failed."
    assert "too many failed logins from this address" in strict_relay.journal_text()[mark:]
