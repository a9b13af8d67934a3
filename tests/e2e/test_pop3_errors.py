"""POP3 login failures through a real `oauth-relay serve`: each answered with its RFC 3206 code.

-ERR [AUTH] for bad local credentials, no POP3 permission and a refused refresh token (with a
re-sign-in text; the journal says why, with the AADSTS code); -ERR [SYS/TEMP] when the identity
provider or Dovecot is down. A token Dovecot refuses is refreshed once, and the login succeeds.
"""

import poplib
import time

import pytest

from tests.e2e.harness import AWKWARD_PASSWORD, wait_for
from tests.e2e.pop3_support import RawPop3, new_user, plain


@pytest.fixture(scope="module")
def member(relay):
    return new_user(relay, protocols=["pop3"])


def attempt(relay, bed, name: str, password: str, port_name: str = "pop3-tls") -> bytes:
    """USER/PASS with poplib; returns the PASS reply (or the error's text)."""
    if port_name == "pop3-tls":
        conn = poplib.POP3_SSL("127.0.0.1", relay.ports[port_name], context=bed.ssl_context(), timeout=60)
    else:
        conn = poplib.POP3("127.0.0.1", relay.ports[port_name], timeout=60)
    try:
        conn.user(name)
        try:
            reply = conn.pass_(password)
        except poplib.error_proto as exc:
            return exc.args[0]
        conn.stat()
        return reply
    finally:
        conn.quit()


def journal_after(relay, mark: int, needle: str) -> str:
    """The journal written since `mark`, once it holds `needle` (workers write asynchronously)."""
    return wait_for(lambda: needle in relay.journal_text()[mark:] and relay.journal_text()[mark:], 10,
                    f"{needle!r} in the journal")


# ------------------------------------------------------------------ local refusals

def test_wrong_local_password(relay, bed, member):
    mark = len(relay.journal_text())
    reply = attempt(relay, bed, member.name, member.password + "x")
    assert reply == b"-ERR [AUTH] Authentication failed."
    assert member.name in journal_after(relay, mark, "wrong local password")


def test_password_differing_only_in_non_ascii_is_refused(relay, bed, member):
    assert attempt(relay, bed, member.name, AWKWARD_PASSWORD.replace("€", "e")).startswith(b"-ERR [AUTH]")


def test_unknown_user(relay, bed, member):
    mark = len(relay.journal_text())
    assert attempt(relay, bed, "nobody-" + member.name, member.password) == b"-ERR [AUTH] Authentication failed."
    journal_after(relay, mark, "unknown local user")


def test_no_pop3_permission(relay, bed):
    imap_only = new_user(relay, protocols=["imap", "smtp"], sign_in=False, account=bed.new_account())
    mark = len(relay.journal_text())
    reply = attempt(relay, bed, imap_only.name, imap_only.password, "pop3-starttls")
    assert reply.startswith(b"-ERR [AUTH]") and b"POP3" in reply
    journal_after(relay, mark, "pop3 is not in this user's protocols")


def test_auth_plain_refusals_use_the_same_codes(relay, member):
    with RawPop3(relay.ports["pop3-starttls"]) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain(member.name, "wrong")).startswith(b"-ERR [AUTH]")
        assert raw.command("AUTH PLAIN " + plain("nobody", member.password)).startswith(b"-ERR [AUTH]")
        # The session goes on after a refusal: the right password still works.
        assert raw.command("AUTH PLAIN " + plain(member.name, member.password)).startswith(b"+OK")
        assert raw.command("STAT").startswith(b"+OK 0 ")
        raw.command("QUIT")


# ------------------------------------------------------------------ tokens

def test_token_expiring_between_logins_is_refreshed_once(relay, bed):
    user = new_user(relay, protocols=["pop3"])
    assert attempt(relay, bed, user.name, user.password).startswith(b"+OK")
    assert bed.idp.expire_access_tokens(user.account) >= 1
    bed.idp.reset_counts()
    mark = len(relay.journal_text())
    # The relay still holds the (now dead) access token: Dovecot refuses it, the relay
    # refreshes once and logs in with the new one.
    assert attempt(relay, bed, user.name, user.password, "pop3-starttls").startswith(b"+OK")
    assert bed.idp.counts().get("token:refresh_token") == 1
    journal_after(relay, mark, "upstream_refused_token")


def test_refused_refresh_token_asks_for_a_new_sign_in(relay, bed):
    user = new_user(relay, protocols=["pop3"])
    assert bed.idp.revoke(user.account, code=50173) >= 1
    mark = len(relay.journal_text())
    reply = attempt(relay, bed, user.name, user.password)
    assert reply.startswith(b"-ERR [AUTH] ")
    assert b"oauth-relay login" in reply and b"sign-in" in reply
    journal = journal_after(relay, mark, "login_needs_signin")
    line = next(l for l in journal.splitlines() if "login_needs_signin" in l)
    assert "50173" in line and user.account in line and "oauth-relay login" in line
    # Asked again, it still says so; after a new sign-in the same local login works.
    assert attempt(relay, bed, user.name, user.password, "pop3-starttls").startswith(b"-ERR [AUTH] ")
    bed.idp.set_device_flow(interval=1)
    relay.sign_in(user.account)
    assert attempt(relay, bed, user.name, user.password).startswith(b"+OK")


def test_identity_provider_down(relay, bed):
    user = new_user(relay, protocols=["pop3"])
    bed.idp.expire_access_tokens(user.account)
    bed.idp.fail_token_endpoint(status=500)
    mark = len(relay.journal_text())
    reply = attempt(relay, bed, user.name, user.password)
    assert reply.startswith(b"-ERR [SYS/TEMP] "), reply
    journal_after(relay, mark, "login_unavailable")
    # Once it is back, the login works without anyone signing in again (after the token
    # service's short back-off from the failed refresh).
    bed.idp.clear_faults()
    wait_for(lambda: attempt(relay, bed, user.name, user.password).startswith(b"+OK"), 20,
             "a login after the identity provider is back", interval=0.5)


# ------------------------------------------------------------------ upstream

def test_dovecot_stopped(relay, bed, member):
    with RawPop3(relay.ports["pop3-tls"], bed.ssl_context()) as open_session:
        open_session.line()
        assert open_session.command("AUTH PLAIN " + plain(member.name, member.password)).startswith(b"+OK")
        bed.dovecot.stop()
        # The piped session ends with Dovecot's: the client is not left hanging.
        assert open_session.closed(timeout=10)
    mark = len(relay.journal_text())
    started = time.monotonic()
    for port_name in ("pop3-tls", "pop3-starttls"):
        assert attempt(relay, bed, member.name, member.password, port_name).startswith(b"-ERR [SYS/TEMP] ")
    assert time.monotonic() - started < 10
    journal_after(relay, mark, "login_upstream_failed")
    bed.dovecot.start()
    assert attempt(relay, bed, member.name, member.password).startswith(b"+OK")


def test_no_secret_reaches_the_journal(relay, bed, member):
    # Log in here with each form, so the journal holds this test's own logins whichever
    # worker (pytest-xdist) ran the other tests of this module.
    assert attempt(relay, bed, member.name, member.password).startswith(b"+OK")
    assert attempt(relay, bed, member.name, member.password + "x").startswith(b"-ERR [AUTH]")
    conn = poplib.POP3_SSL("127.0.0.1", relay.ports["pop3-tls"], context=bed.ssl_context(), timeout=60)
    try:
        assert conn._shortcmd("AUTH PLAIN " + plain(member.name, member.password)).startswith(b"+OK")
    finally:
        conn.quit()
    journal = relay.journal_text()
    assert member.name in journal
    for secret in (AWKWARD_PASSWORD, plain(member.name, member.password)):
        assert secret not in journal
