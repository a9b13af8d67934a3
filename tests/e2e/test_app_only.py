"""App-only (client credentials) through a real `oauth-relay serve`, end to end.

A confidential app with a client secret: nobody signs in, the relay gets app-only tokens by
itself, and Office 365 (the bed) lets the app open only the mailboxes it was granted
(Add-MailboxPermission). users.yaml is then the strict list of which local user may reach
which mailbox: a name not in it gets nothing, and a user mapped to a mailbox the app was not
granted gets the "Office 365 refuses the account access" answer of the README's table.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.bed import APP_SCOPES
from tests.e2e.harness import Relay
from tests.e2e.smtp_support import (RawSmtp, assert_delivered_as_sent, b64, delivered_once, message,
                                    smtplib_client, smtplib_login)
from tests.e2e.test_imap import RawImap, quoted, select_and_logout

pytestmark = pytest.mark.timeout(120)
PASSWORD = "App-only_pass.42"
APP = "daemon"
REFUSED_MAILBOX = b"Office 365 refused this account access to the mailbox."


class AppOnlyRelay(Relay):
    """The harness's relay with one confidential client-credentials app instead of `bed`."""

    def __init__(self, bed, root):
        super().__init__(bed, root)
        self.secret = "app-secret-" + uuid.uuid4().hex
        self.app_id = bed.idp.register_app(type="confidential", secret=self.secret)
        secret_file = root / "daemon.secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.secret + "\n")
        text = self.config.read_text()
        app = (f"apps:\n  {APP}:\n    client_id: {self.app_id}\n    tenant: {bed.tenant}\n"
               f"    type: confidential\n    flow: client_credentials\n"
               f"    client_secret_file: {secret_file}\n    authority: {bed.idp.authority()}\n")
        text, replaced = re.subn(r"(?ms)^apps:\n.*?^(?=listeners:)", lambda _: app, text)
        assert replaced == 1, text
        self.config.write_text(text)

    def mailbox_user(self, mailbox: str, protocols=("imap", "smtp")):
        """A local user mapped to `mailbox` (no sign-in: the app's token serves every user)."""
        return self.new_user(account=mailbox, password=PASSWORD, protocols=list(protocols), sign_in=False)


@pytest.fixture(scope="module")
def app_relay(bed, tmp_path_factory):
    instance = AppOnlyRelay(bed, tmp_path_factory.mktemp("app-only"))
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def granted(app_relay, bed):
    """A user whose mailbox the app may open and send as."""
    mailbox = bed.new_account("app")
    bed.idp.grant_mailbox_access(app_relay.app_id, mailbox, send_as=True)
    return app_relay.mailbox_user(mailbox)


@pytest.fixture(scope="module")
def not_granted(app_relay, bed):
    """A user in users.yaml whose mailbox the app was never granted."""
    return app_relay.mailbox_user(bed.new_account("nogrant"))


def imap_login(relay, bed, name: str, password: str):
    """LOGIN over IMAPS; the tagged reply, after SELECT + LOGOUT when it worked."""
    with RawImap.open(relay, bed, "tls") as client:
        reply = client.command(b"a1", b"LOGIN " + quoted(name) + b" " + quoted(password))[-1]
        if reply.startswith(b"a1 OK"):
            select_and_logout(client)
        return reply


def smtp_auth(relay, bed, name: str, password: str):
    """AUTH PLAIN on the implicit-TLS listener: the reply (code, text)."""
    with RawSmtp(relay.ports["smtp-tls"], bed.ssl_context()) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        return raw.command(b"AUTH PLAIN " + b64(f"\0{name}\0{password}"))


def journal_since(relay, offset: int) -> str:
    return relay.journal_text()[offset:]


def test_granted_mailbox_reads_over_imap_and_sends_over_smtp(app_relay, bed, granted):
    bed.idp.reset_counts()
    assert imap_login(app_relay, bed, granted.name, granted.password).startswith(b"a1 OK")
    rcpt = bed.new_account("r")
    sent = message(granted.account, rcpt, b"sent with an app-only token\r\n")
    with smtplib_client(app_relay, bed, "tls") as client:
        assert smtplib_login(client, granted) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(granted.account, [rcpt], sent) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, granted.account, rcpt)
    # No sign-in anywhere: the only grant used is client_credentials, by the relay itself.
    counts = bed.idp.counts()
    assert not [key for key in counts if key.startswith("token:") and key != "token:client_credentials"], counts
    assert not counts.get("devicecode") and not counts.get("authorize"), counts


def test_relay_asks_for_the_cloud_app_only_scope_and_nothing_else(app_relay, bed, granted):
    """Worldwide cloud (no `cloud:` in relay.yaml): exactly https://outlook.office365.com/.default."""
    assert APP_SCOPES == ["https://outlook.office365.com/.default"]
    bed.idp.expire_access_tokens(app_relay.app_id)  # Dovecot refuses them: the relay must fetch anew
    assert imap_login(app_relay, bed, granted.name, granted.password).startswith(b"a1 OK")
    asked = bed.idp.token_requests(client_id=app_relay.app_id)
    assert asked, "the relay made no token request for the app"
    assert {(r["grant_type"], r["scope"]) for r in asked} == {
        ("client_credentials", "https://outlook.office365.com/.default")}, asked


def test_name_not_in_users_yaml_is_refused(app_relay, bed, granted):
    offset = len(app_relay.journal_text())
    stranger = "not-in-users-" + uuid.uuid4().hex[:6]
    assert imap_login(app_relay, bed, stranger, PASSWORD) == b"a1 NO [AUTHENTICATIONFAILED] Authentication failed."
    assert smtp_auth(app_relay, bed, stranger, PASSWORD) == (535, "535 5.7.8 Authentication credentials invalid")
    # Nor the mailbox address itself: only a local user name maps to a mailbox.
    assert imap_login(app_relay, bed, granted.account, PASSWORD).startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    journal = journal_since(app_relay, offset)
    assert journal.count('reason="unknown local user"') == 3, journal[-3000:]
    assert "login_ok" not in journal


def test_user_mapped_to_a_mailbox_the_app_may_not_open(app_relay, bed, not_granted):
    offset = len(app_relay.journal_text())
    # A new sign-in would not help, so neither answer asks for one.
    reply = imap_login(app_relay, bed, not_granted.name, not_granted.password)
    assert reply.rstrip(b"\r\n") == b"a1 NO [AUTHORIZATIONFAILED] " + REFUSED_MAILBOX, reply
    code, text = smtp_auth(app_relay, bed, not_granted.name, not_granted.password)
    assert (code, text) == (535, "535 5.7.8 " + REFUSED_MAILBOX.decode())
    journal = journal_since(app_relay, offset)
    refused = re.findall(r"login_upstream_failed .*account=%s .*freshly refreshed token.*" % re.escape(
        not_granted.account), journal)
    assert len(refused) == 2, journal[-3000:]  # IMAP and SMTP: each tried a fresh app token first
    assert "login_ok" not in journal
    # Granted afterwards (Add-MailboxPermission): the same user gets in, no restart, no sign-in.
    bed.idp.grant_mailbox_access(app_relay.app_id, not_granted.account)
    assert imap_login(app_relay, bed, not_granted.name, not_granted.password).startswith(b"a1 OK")
    bed.idp.revoke_mailbox_access(app_relay.app_id, not_granted.account)


# A setup problem of the relay's own (here: the app's secret file gone) is the admin's to fix,
# never a sign-in; the program is told so without the server's paths, as a temporary failure
# (it is retried once fixed), the journal and status say what to fix, and once it is fixed the
# next login works.
SETUP_PROBLEM = ("The relay's configuration for this account has a problem; the administrator must look at "
                 "the relay's journal.")
APP_FIX = (f"check the client secret or certificate of app {APP} (client_secret_file or certificate_file "
           "in relay.yaml, and the app registration in Entra ID), then run: oauth-relay reload")


def reload(relay) -> None:
    result = relay.cli("reload", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr


def break_secret_file(relay, bed, secret_file, moved) -> None:
    """The file goes away after a reload: the new workers have not read it yet, and the token
    they have is expired at the identity provider, so the next login must read the file."""
    reload(relay)
    os.rename(secret_file, moved)
    bed.idp.expire_access_tokens(relay.app_id)


def assert_setup_problem_refused(relay, bed, user) -> None:
    reply = imap_login(relay, bed, user.name, user.password)
    assert reply.rstrip(b"\r\n") == b"a1 NO [UNAVAILABLE] " + SETUP_PROBLEM.encode(), reply
    assert smtp_auth(relay, bed, user.name, user.password) == (
        454, "454 4.7.0 Temporary authentication failure: " + SETUP_PROBLEM)


def test_unreadable_client_secret_is_a_setup_problem_retried_once_fixed(app_relay, bed, granted):
    secret_file = app_relay.root / "daemon.secret"
    moved = app_relay.root / "daemon.secret.moved"
    original = app_relay.config.read_text()
    assert f"client_secret_file: {secret_file}\n" in original
    offset = len(app_relay.journal_text())
    try:
        break_secret_file(app_relay, bed, secret_file, moved)
        assert_setup_problem_refused(app_relay, bed, granted)
        journal = journal_since(app_relay, offset)
        reason = f"setup problem: cannot read client secret file {secret_file}: No such file or directory"
        assert re.search(r"token setup problem .*app=%s reason=\"%s\" fix=\"%s\" retry_in=5" % (
            APP, re.escape(reason), re.escape(APP_FIX)), journal), journal[-3000:]
        assert "needs sign-in" not in journal
        status = app_relay.cli("status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"  error\n    {reason}\n    fix: {APP_FIX}\n" in status.stdout, status.stdout
        assert "oauth-relay login" not in status.stdout

        # Put back where relay.yaml says: the next login works, no reload, no waiting.
        os.rename(moved, secret_file)
        assert imap_login(app_relay, bed, granted.name, granted.password).startswith(b"a1 OK")

        # Gone again; this time relay.yaml is pointed at where the file is now, and reloaded.
        break_secret_file(app_relay, bed, secret_file, moved)
        assert_setup_problem_refused(app_relay, bed, granted)
        app_relay.config.write_text(original.replace(f"client_secret_file: {secret_file}\n",
                                                     f"client_secret_file: {moved}\n"))
        reload(app_relay)
        assert imap_login(app_relay, bed, granted.name, granted.password).startswith(b"a1 OK")
        assert smtp_auth(app_relay, bed, granted.name, granted.password)[0] == 235
        status = app_relay.cli("status")
        assert status.returncode == 0 and "  ok\n" in status.stdout, status.stdout + status.stderr
    finally:
        # Leave the relay working for later tests: the secret where relay.yaml names it (a
        # file that appears again is retried at once, no reload needed).
        named = moved if f"client_secret_file: {moved}\n" in app_relay.config.read_text() else secret_file
        if not named.exists():
            os.rename(moved if named == secret_file else secret_file, named)
