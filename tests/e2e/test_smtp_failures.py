"""SMTP through a real `oauth-relay serve` when something says no or breaks.

The upstream's refusals reach the client unchanged (550 stays 550, 4xx stays 4xx), a message
is answered 250 only if Postfix took it, the relay's own refusals say what to do, and a
message is never delivered twice nor half.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import time

import pytest

from tests.e2e.fake_upstream import FakeUpstream, serve_only
from tests.e2e.harness import Relay, wait_for
from tests.e2e.smtp_support import (RawSmtp, assert_delivered_as_sent, assert_nothing_delivered, delivered_once,
                                    message, plain_response, port_of, smtplib_client, smtplib_login)

pytestmark = pytest.mark.timeout(120)
ASCII_PASSWORD = "failures pass"
LOGIN_TIMEOUT = 3   # the second relay's upstream.login_timeout
NEEDS_SIGNIN = ("535 5.7.8 The relay has no valid Office 365 sign-in for this account;"
                " the administrator must run 'oauth-relay login'.")


@pytest.fixture(scope="module")
def sender(relay, bed):
    bed.idp.set_device_flow(interval=1)   # sign-in polls every second (reset after the test)
    return relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD)


def _journal_since(relay, mark: int) -> str:
    return relay.journal_text()[mark:]


def _session_lines(journal: str, user) -> str:
    return "\n".join(line for line in journal.splitlines() if f"user={user.name}" in line)


def _direct(bed, account):
    """An authenticated connection straight to Postfix, to see its own answers."""
    return bed.smtp_login(account, bed.token_for(account))


def _auth(raw: RawSmtp, user):
    assert raw.reply()[0] == 220
    assert raw.command(b"EHLO legacy.example.test")[0] == 250
    return raw.command(b"AUTH PLAIN " + plain_response(user))


# ------------------------------------------------------------------------- upstream refusals

def test_recipient_refused_by_the_upstream_gets_its_550_unchanged(relay, bed, sender):
    good = bed.new_account("r")
    with _direct(bed, sender.account) as direct:
        direct.mail(sender.account)
        postfix_says = direct.rcpt(bed.reject_recipient)
    assert postfix_says[0] == 550
    sent = message(sender.account, good, b"to one good and one refused recipient\r\n")
    with smtplib_client(relay, bed, "starttls") as client:
        smtplib_login(client, sender)
        assert client.mail(sender.account)[0] == 250
        assert client.rcpt(bed.reject_recipient) == postfix_says
        assert client.rcpt(good)[0] == 250
        assert client.data(sent)[0] == 250
        # And through sendmail(): the refused recipient is reported with Postfix's own words.
        assert client.sendmail(sender.account, [bed.reject_recipient, good], sent) == {
            bed.reject_recipient: postfix_says}
    stored = delivered_once(bed, good, 2)
    for copy in stored:
        assert_delivered_as_sent(copy, sent, sender.account, good)


def test_recipient_with_a_temporary_failure_gets_the_4xx(relay, bed, sender):
    with _direct(bed, sender.account) as direct:
        direct.mail(sender.account)
        postfix_says = direct.rcpt(bed.tempfail_recipient)
    assert postfix_says[0] == 450
    sent = message(sender.account, bed.tempfail_recipient, b"only a temporarily failing recipient\r\n")
    with smtplib_client(relay, bed, "tls") as client:
        smtplib_login(client, sender)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(sender.account, [bed.tempfail_recipient], sent)
        assert refused.value.recipients == {bed.tempfail_recipient: postfix_says}
        # The session goes on after the refusal.
        assert client.rset()[0] == 250
        assert client.noop()[0] == 250


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_postfix_stopped_mid_data_never_gets_a_250(relay, bed, sender, mode):
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, b"x" * 76 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 2000)
    half = len(sent) // 2
    mark = len(relay.journal_text())
    with RawSmtp(port_of(relay, mode), bed.ssl_context() if mode == "tls" else None, timeout=30) as raw:
        assert _auth(raw, sender)[0] == 235
        assert raw.command(b"MAIL FROM:<" + sender.account.encode() + b">")[0] == 250
        assert raw.command(b"RCPT TO:<" + rcpt.encode() + b">")[0] == 250
        assert raw.command(b"DATA")[0] == 354
        raw.send(sent[:half])
        bed.postfix.stop()
        try:
            raw.send(sent[half:] + b".\r\n")
        except OSError:
            pass   # the relay may already have closed: just as good
        started = time.monotonic()
        code, text = raw.reply()
        assert code == 0 or code >= 400, f"the client was told {text!r} although Postfix went away mid-DATA"
        assert raw.rest() == b""
        assert time.monotonic() - started < 15
    # Only this test's session: a session of the test before (same user) may be journaled as
    # closed after `mark`, since the relay writes session_closed once both sides are done.
    def own_closed():
        lines = _session_lines(_journal_since(relay, mark), sender).splitlines()
        ours = {match.group(1) for match in (re.search(r" login_ok .*?session=(\S+)", line) for line in lines) if match}
        return [line for line in lines if " session_closed " in line
                and re.search(r"session=(\S+)", line).group(1) in ours]
    closed = wait_for(own_closed, 10, "the relay to journal the session's end")
    assert len(closed) == 1 and 'reason="upstream closed"' in closed[0], closed   # not blamed on the client
    bed.postfix.start()
    # After the restart: the half message never turns up, a new one goes out once.
    marker = message(sender.account, rcpt, b"sent after Postfix came back\r\n")
    with smtplib_client(relay, bed, mode) as client:
        smtplib_login(client, sender)
        assert client.sendmail(sender.account, [rcpt], marker) == {}
    stored = delivered_once(bed, rcpt, 1)
    assert_delivered_as_sent(stored[0], marker, sender.account, rcpt)


def test_client_gone_mid_data_sends_nothing(relay, bed, sender):
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, b"z" * 900 + b"\r\n")
    with RawSmtp(port_of(relay, "plain")) as raw:
        assert _auth(raw, sender)[0] == 235
        assert raw.command(b"MAIL FROM:<" + sender.account.encode() + b">")[0] == 250
        assert raw.command(b"RCPT TO:<" + rcpt.encode() + b">")[0] == 250
        assert raw.command(b"DATA")[0] == 354
        raw.send(sent[:600])
    marker = message(sender.account, rcpt, b"the one that was finished\r\n")
    with smtplib_client(relay, bed, "plain") as client:
        smtplib_login(client, sender)
        assert client.sendmail(sender.account, [rcpt], marker) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt, 1)[0], marker, sender.account, rcpt)


def test_postfix_down_before_auth_gets_454(relay, bed, sender):
    bed.postfix.stop()
    mark = len(relay.journal_text())
    with RawSmtp(port_of(relay, "plain")) as raw:
        code, text = _auth(raw, sender)
        assert (code, text) == (454, "454 4.7.0 Temporary authentication failure: "
                                     "Office 365 is unavailable right now; try again later.")
        # The session stays usable: a later AUTH (Postfix back) works.
        bed.postfix.start()
        assert raw.command(b"AUTH PLAIN " + plain_response(sender))[0] == 235
        assert raw.command(b"QUIT")[0] == 221
    journal = _session_lines(_journal_since(relay, mark), sender)
    assert re.search(r"login_upstream_failed .*reason=.?cannot connect to 127\.0\.0\.2:", journal), journal


def test_identity_provider_down_gets_454(relay, bed):
    user = relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD)   # its token service backs off now
    bed.idp.expire_access_tokens(user.account)    # the relay must go to the token endpoint...
    bed.idp.fail_token_endpoint(status=503)       # ...which fails
    refreshes = bed.idp.counts().get("token:refresh_token", 0)
    mark = len(relay.journal_text())
    for mode in ("tls", "tls"):   # the second attempt is answered from the token service's back-off
        with RawSmtp(port_of(relay, mode), bed.ssl_context()) as raw:
            code, text = _auth(raw, user)
            assert code == 454 and text.startswith("454 4.7.0 Temporary authentication failure: "), text
    journal = _session_lines(_journal_since(relay, mark), user)
    assert journal.count("login_unavailable") == 2, journal
    assert bed.idp.counts().get("token:refresh_token", 0) == refreshes + 1


# ------------------------------------------------------------------------- tokens

def test_token_expired_between_two_sessions_is_refreshed_once(relay, bed):
    user = relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD)
    rcpt = bed.new_account("r")
    first, second = (message(user.account, rcpt, b"first\r\n"), message(user.account, rcpt, b"second\r\n"))
    with smtplib_client(relay, bed, "starttls") as client:
        smtplib_login(client, user)
        assert client.sendmail(user.account, [rcpt], first) == {}
    delivered_once(bed, rcpt, 1)
    assert bed.idp.expire_access_tokens(user.account) >= 1
    refreshes = bed.idp.counts().get("token:refresh_token", 0)
    mark = len(relay.journal_text())
    with smtplib_client(relay, bed, "starttls") as client:
        assert smtplib_login(client, user)[0] == 235
        assert client.sendmail(user.account, [rcpt], second) == {}
    assert bed.idp.counts().get("token:refresh_token", 0) == refreshes + 1
    journal = _session_lines(_journal_since(relay, mark), user)
    assert journal.count("upstream_refused_token") == 1, journal
    stored = delivered_once(bed, rcpt, 2)
    assert_delivered_as_sent(stored[0], first, user.account, rcpt)
    assert_delivered_as_sent(stored[1], second, user.account, rcpt)


def test_refresh_token_revoked_gets_535_saying_sign_in_again(relay, bed):
    user = relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD)
    rcpt = bed.new_account("r")
    bed.idp.revoke(user.account)                    # AADSTS50173: the password was reset
    bed.idp.expire_access_tokens(user.account)
    mark = len(relay.journal_text())
    with RawSmtp(port_of(relay, "starttls")) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        assert raw.command(b"STARTTLS")[0] == 220
        raw.start_tls(bed.ssl_context())
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        code, text = raw.command(b"AUTH LOGIN " + base64.b64encode(user.name.encode()))
        assert code == 334
        code, text = raw.command(base64.b64encode(user.password.encode()))
        assert code == 535 and text.startswith(NEEDS_SIGNIN), text
        assert raw.command(b"MAIL FROM:<" + user.account.encode() + b">") == (503, "503 5.5.1 Authentication required first")
        assert raw.command(b"QUIT")[0] == 221
    journal = _session_lines(_journal_since(relay, mark), user)
    assert re.search(r"login_needs_signin .*account=" + re.escape(user.account) + r" .*aadsts=50173", journal), journal
    assert "oauth-relay login" in journal
    assert_nothing_delivered(bed, rcpt)


# ------------------------------------------------------------------------- local refusals

def test_wrong_password_and_missing_smtp_permission_get_535(relay, bed, sender):
    imap_only = relay.new_user(protocols=["imap"], password=ASCII_PASSWORD, account=sender.account, sign_in=False)
    mark = len(relay.journal_text())
    for mode in ("plain", "tls"):
        with RawSmtp(port_of(relay, mode), bed.ssl_context() if mode == "tls" else None) as raw:
            assert raw.reply()[0] == 220
            assert raw.command(b"EHLO legacy.example.test")[0] == 250
            wrong = base64.b64encode(b"\0" + sender.name.encode() + b"\0not the password")
            assert raw.command(b"AUTH PLAIN " + wrong) == (535, "535 5.7.8 Authentication credentials invalid")
            # The password was right: say what is wrong, as IMAP and POP3 do.
            assert raw.command(b"AUTH PLAIN " + plain_response(imap_only)) == (
                535, "535 5.7.8 This account is not allowed to use SMTP.")
            assert raw.command(b"QUIT")[0] == 221
    journal = _journal_since(relay, mark)
    assert "wrong local password" in _session_lines(journal, sender)
    assert "smtp is not in this user's protocols" in _session_lines(journal, imap_only)
    for user in (sender, imap_only):   # neither was worth a trip to Office 365
        assert "relay>upstream" not in _session_lines(journal, user)


# ------------------------------------------------------------------------- shared mailbox

def test_shared_mailbox_as_sender(relay, bed):
    """The relay authenticates as the token owner; the shared address is the MAIL FROM, and the
    upstream checks it against Send As."""
    owner = bed.new_account("owner")
    shared, not_granted = bed.new_account("shared"), bed.new_account("other")
    bed.idp.grant_mailbox_access(owner, shared, send_as=True)
    bed.idp.grant_mailbox_access(owner, not_granted, send_as=False)
    user = relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD, mailbox=shared, account=owner)
    rcpt = bed.new_account("r")
    sent = message(shared, rcpt, b"sent as the shared mailbox\r\n")
    with smtplib_client(relay, bed, "starttls") as client:
        smtplib_login(client, user)
        assert client.sendmail(shared, [rcpt], sent) == {}
        # Without Send As the upstream refuses the sender, naming the token owner: proof that
        # the relay logged in as the owner, not as the shared mailbox.
        assert client.mail(not_granted)[0] == 250   # Postfix checks the sender at RCPT time
        code, text = client.rcpt(rcpt)
        assert code == 553 and f"not owned by user {owner}".encode() in text, text
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, shared, rcpt)
    assert f"sasl_username={owner}" in bed.postfix.log_tail(200)


# ------------------------------------------------------------------------- a second relay

class FakeOffice365Smtp(FakeUpstream):
    """Office 365's SMTP as far as Postfix cannot play it: STARTTLS, then an answer to AUTH
    XOAUTH2 chosen by the account's local part (the SASL user is always the token owner):
    THROTTLED's answers, none at all for "silent", and `535 5.7.139` (SMTP AUTH switched off
    for the tenant) for every other account. Counts the AUTH attempts per account."""

    ANSWER = ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
              "Visit https://aka.ms/smtp_auth_disabled for more information. [AM0PR01CA0001]")
    # Office 365's "not now" answers: the temporary server error, and the throttling that ends
    # the connection.
    THROTTLED = {
        "busy454": "454 4.7.0 Temporary server error. Please try again later. PRX4 [AM0PR01CA0001]",
        "busy451": "451 4.7.0 Temporary server error. Please try again later. PRX4 [AM0PR01CA0001]",
        "busy421": "421 4.7.66 Too many concurrent connections from this client. Try again later. [AM0PR01CA0001]",
    }

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            reader = conn.makefile("rb")
            conn.sendall(b"220 fake.outlook.test Microsoft ESMTP MAIL Service ready\r\n")
            for _ in range(20):
                raw = reader.readline(65536).rstrip(b"\r\n")
                line = raw.upper()
                if not line or line == b"QUIT":
                    break
                if line.startswith(b"EHLO"):
                    auth = b"250-AUTH LOGIN XOAUTH2\r\n" if isinstance(conn, ssl.SSLSocket) else b"250-STARTTLS\r\n"
                    conn.sendall(b"250-fake.outlook.test Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n"
                                 + auth + b"250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif line == b"STARTTLS":
                    conn.sendall(b"220 2.0.0 SMTP server ready\r\n")
                    reader.close()
                    conn = self.context.wrap_socket(conn, server_side=True)
                    reader = conn.makefile("rb")
                elif line.startswith(b"AUTH XOAUTH2"):
                    if line == b"AUTH XOAUTH2":
                        conn.sendall(b"334 \r\n")
                        raw = reader.readline(65536).strip()
                    if not self._authenticate(conn, raw.split(b" ")[-1]):
                        break
                else:
                    conn.sendall(b"500 5.3.3 Unrecognized command\r\n")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _authenticate(self, conn, response: bytes) -> bool:
        """Answer one AUTH XOAUTH2; False when the connection is to end."""
        account = self._count_login(response)
        kind = account.split("-")[0]
        if kind == "silent":
            self.closing.wait(LOGIN_TIMEOUT + 5)
            return False
        conn.sendall(self.THROTTLED.get(kind, self.ANSWER).encode() + b"\r\n")
        return not self.THROTTLED.get(kind, "").startswith("421")


@pytest.fixture(scope="module")
def second_relay(bed, tmp_path_factory):
    """SMTP listeners only, plaintext AUTH allowed from nowhere, Office 365 a fake (mostly saying
    5.7.139), a short upstream login time limit."""
    root = tmp_path_factory.mktemp("relay-smtp-second")
    fake = FakeOffice365Smtp(bed, str(root / "fake-certs"))
    instance = Relay(bed, root, auth={"plaintext_from": "[]"})
    serve_only(instance, "smtp", {
        f"  smtp: {{host: {bed.upstream_host}, port: {bed.smtp_port}, security: starttls}}\n":
            f"  smtp: {{host: 127.0.0.1, port: {fake.port}, security: starttls}}\n",
        "  login_timeout: 15\n": f"  login_timeout: {LOGIN_TIMEOUT}\n"})
    try:
        instance.start()
        instance.fake = fake
        yield instance
    finally:
        instance.stop()
        fake.close()


def test_auth_before_starttls_gets_530_where_policy_requires_tls(second_relay, bed):
    with RawSmtp(second_relay.ports["smtp-starttls"]) as raw:
        assert raw.reply()[0] == 220
        code, text = raw.command(b"EHLO legacy.example.test")
        assert code == 250 and "STARTTLS" in text and "AUTH" not in text
        assert raw.command(b"AUTH PLAIN " + base64.b64encode(b"\0someone\0secret")) == (
            530, "530 5.7.0 Must issue a STARTTLS command first")
        assert raw.command(b"MAIL FROM:<someone@example.test>") == (
            530, "530 5.7.0 Must issue a STARTTLS command first")
        assert raw.command(b"STARTTLS")[0] == 220
        raw.start_tls(bed.ssl_context())
        code, text = raw.command(b"EHLO legacy.example.test")
        assert code == 250 and text.endswith("250 AUTH PLAIN LOGIN") and "STARTTLS" not in text
        assert raw.command(b"QUIT")[0] == 221


def test_smtp_auth_disabled_gets_535_5_7_139_and_the_admin_fix(second_relay, bed):
    bed.idp.set_device_flow(interval=1)
    user = second_relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD)
    refreshes = bed.idp.counts().get("token:refresh_token", 0)
    mark = len(second_relay.journal_text())
    with RawSmtp(second_relay.ports["smtp-tls"], bed.ssl_context()) as raw:
        code, text = _auth(raw, user)
        assert text == ("535 5.7.139 SMTP AUTH is disabled for this mailbox or tenant in Office 365. "
                        "See https://aka.ms/smtp_auth_disabled"), text
        assert raw.command(b"QUIT")[0] == 221
    assert second_relay.fake.attempts[user.account] == 1              # no second try...
    assert bed.idp.counts().get("token:refresh_token", 0) == refreshes  # ...and no refresh
    journal = _session_lines(_journal_since(second_relay, mark), user)
    assert re.search(r"error +login_smtp_auth_disabled .*5\.7\.139 .*Set-CASMailbox .*"
                     r"-SmtpClientAuthenticationDisabled \$false", journal), journal


@pytest.mark.parametrize("kind", sorted(FakeOffice365Smtp.THROTTLED))
def test_throttled_upstream_gets_454_without_a_refresh(second_relay, bed, kind):
    bed.idp.set_device_flow(interval=1)
    user = second_relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD, account=bed.new_account(kind))
    bed.idp.reset_counts()
    mark = len(second_relay.journal_text())
    with RawSmtp(second_relay.ports["smtp-tls"], bed.ssl_context()) as raw:
        assert _auth(raw, user) == (454, "454 4.7.0 Temporary authentication failure: "
                                         "Office 365 is unavailable right now; try again later.")
        assert raw.command(b"QUIT")[0] == 221
    assert second_relay.fake.attempts[user.account] == 1   # "not now" is no reason to retry...
    assert not bed.idp.counts().get("token:refresh_token")  # ...nor to refresh the token
    journal = _session_lines(_journal_since(second_relay, mark), user)
    assert re.search(r"login_upstream_failed .*answer=.?%s" % re.escape(FakeOffice365Smtp.THROTTLED[kind]),
                     journal), journal
    assert "upstream_refused_token" not in journal


def test_upstream_that_never_answers_auth_gets_454_after_the_login_timeout(second_relay, bed):
    bed.idp.set_device_flow(interval=1)
    user = second_relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD, account=bed.new_account("silent"))
    bed.idp.reset_counts()
    mark = len(second_relay.journal_text())
    with RawSmtp(second_relay.ports["smtp-tls"], bed.ssl_context(), timeout=LOGIN_TIMEOUT + 15) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        started = time.monotonic()
        assert raw.command(b"AUTH PLAIN " + plain_response(user)) == (
            454, "454 4.7.0 Temporary authentication failure: Office 365 is unavailable right now; try again later.")
        assert LOGIN_TIMEOUT - 0.5 < time.monotonic() - started < LOGIN_TIMEOUT + 3
        assert raw.command(b"QUIT")[0] == 221
    assert second_relay.fake.attempts[user.account] == 1
    assert not bed.idp.counts().get("token:refresh_token")
    journal = _session_lines(_journal_since(second_relay, mark), user)
    assert re.search(r"login_upstream_failed .*reason=.?127\.0\.0\.1:%d did not answer in time"
                     % second_relay.fake.port, journal), journal
