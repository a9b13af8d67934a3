"""IMAP through `oauth-relay serve`: every way a login can fail, the limits, the journal.

Each failure a user can act on has its RFC 5530 code and the journal says which case it was.
Tests that break an account (revoke, expire) use a user of their own; the IdP faults and a
stopped Dovecot are undone by the bed fixture after each test.
"""

from __future__ import annotations

import base64
import imaplib
import json
import re
import time
from typing import List

import pytest

from tests.e2e.harness import AWKWARD_PASSWORD, Relay, wait_for
from tests.e2e.sockets import connection, relay_sockets
from tests.e2e.test_imap import RawImap, assert_logged_in, plain_ir, quoted, select_and_logout

NEEDS_SIGNIN = b"oauth-relay login"


def login(relay, bed, name: str, password: str, mode: str = "tls", keep: bool = False):
    """LOGIN once; returns the tagged reply (and logs out cleanly after a success)."""
    client = RawImap.open(relay, bed, mode)
    try:
        lines = client.command(b"a1", b"LOGIN " + quoted(name) + b" " + quoted(password))
        if keep:
            return client, lines
        if lines[-1].startswith(b"a1 OK"):
            select_and_logout(client)
        return lines[-1]
    finally:
        if not keep:
            client.close()


def timed_login(relay, bed, user, mode: str = "tls"):
    started = time.monotonic()
    reply = login(relay, bed, user.name, user.password, mode)
    return reply, time.monotonic() - started


def journal_after(relay, offset: int) -> str:
    return relay.journal_text()[offset:]


@pytest.fixture(scope="module")
def user(relay):
    """Signed in, never broken: for the local failures."""
    return relay.new_user()


# ------------------------------------------------------------------------------- local failures
def test_wrong_password_and_unknown_user(relay, bed, user):
    offset = len(relay.journal_text())
    wrong = login(relay, bed, user.name, user.password + "x")
    unknown = login(relay, bed, "nobody-" + user.name, user.password)
    assert wrong.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), wrong
    # The same answer either way: a client cannot tell which user names exist.
    assert unknown == wrong
    journal = journal_after(relay, offset)
    assert 'reason="wrong local password"' in journal
    assert 'reason="unknown local user"' in journal
    # AUTHENTICATE PLAIN gets the same answer.
    with RawImap.open(relay, bed, "plain") as client:
        last = client.command(b"a2", b"AUTHENTICATE PLAIN " + plain_ir(user.name, "not it"))[-1]
        assert last.startswith(b"a2 NO [AUTHENTICATIONFAILED]"), last


def test_imap_not_permitted(relay, bed):
    smtp_only = relay.new_user(protocols=["smtp"])
    offset = len(relay.journal_text())
    reply = login(relay, bed, smtp_only.name, smtp_only.password)
    assert reply.startswith(b"a1 NO [AUTHORIZATIONFAILED]"), reply
    assert "imap is not in this user's protocols" in journal_after(relay, offset)
    # Only after the right password: a wrong one says nothing about the user's protocols.
    reply = login(relay, bed, smtp_only.name, "wrong")
    assert reply.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), reply


def test_no_token_yet(relay, bed):
    fresh = relay.new_user(sign_in=False)
    offset = len(relay.journal_text())
    reply, elapsed = timed_login(relay, bed, fresh)
    assert reply.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), reply
    assert NEEDS_SIGNIN in reply and b"sign" in reply.lower(), reply
    assert elapsed < 5, f"the client waited {elapsed:.1f} s for an account nobody signed in"
    journal = journal_after(relay, offset)
    assert re.search(r"login_needs_signin .*account=%s" % re.escape(fresh.account), journal), journal[-3000:]
    # Once the administrator has signed the account in, the same user gets in.
    relay.sign_in(fresh.account)
    assert login(relay, bed, fresh.name, fresh.password).startswith(b"a1 OK")


# ------------------------------------------------------------------------------- token failures
def test_token_expiring_between_two_logins(relay, bed):
    own = relay.new_user()
    assert login(relay, bed, own.name, own.password).startswith(b"a1 OK")
    assert bed.idp.expire_access_tokens(own.account) >= 1
    bed.idp.reset_counts()
    offset = len(relay.journal_text())
    # The relay still holds the token the IdP just expired: Dovecot refuses it, the relay
    # refreshes once and logs in with the new one.
    reply = login(relay, bed, own.name, own.password)
    assert reply.startswith(b"a1 OK"), reply
    assert bed.idp.counts().get("token:refresh_token") == 1, bed.idp.counts()
    journal = journal_after(relay, offset)
    assert "upstream_refused_token" in journal, journal[-3000:]
    # The other IMAP listener (another worker process) takes the refreshed token from the store.
    assert login(relay, bed, own.name, own.password, mode="plain").startswith(b"a1 OK")
    assert bed.idp.counts().get("token:refresh_token") == 1, bed.idp.counts()


def test_refresh_token_revoked(relay, bed):
    own = relay.new_user()
    assert login(relay, bed, own.name, own.password).startswith(b"a1 OK")
    assert bed.idp.revoke(own.account, code=50173) >= 1
    offset = len(relay.journal_text())
    reply, elapsed = timed_login(relay, bed, own)
    assert reply.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), reply
    assert NEEDS_SIGNIN in reply, reply
    assert elapsed < 10, elapsed
    journal = journal_after(relay, offset)
    assert re.search(r"AADSTS50173|aadsts=50173", journal), journal[-3000:]
    assert re.search(r"login_needs_signin .*account=%s" % re.escape(own.account), journal), journal[-3000:]
    # The other listener says the same (the store records the account needs sign-in).
    reply = login(relay, bed, own.name, own.password, mode="starttls")
    assert reply.startswith(b"a1 NO [AUTHENTICATIONFAILED]") and NEEDS_SIGNIN in reply, reply
    # A new sign-in (as after a password reset) makes it work again.
    relay.sign_in(own.account)
    assert login(relay, bed, own.name, own.password).startswith(b"a1 OK")


def test_identity_provider_down(relay, bed):
    own = relay.new_user()
    assert login(relay, bed, own.name, own.password).startswith(b"a1 OK")
    bed.idp.expire_access_tokens(own.account)
    bed.idp.fail_token_endpoint(status=500)
    offset = len(relay.journal_text())
    reply, elapsed = timed_login(relay, bed, own)
    assert reply.startswith(b"a1 NO [UNAVAILABLE]"), reply
    assert elapsed < 20, f"the client waited {elapsed:.1f} s"
    journal = journal_after(relay, offset)
    assert re.search(r"login_unavailable .*account=%s" % re.escape(own.account), journal), journal[-3000:]
    assert "500" in journal or "server_error" in journal, journal[-3000:]
    # The identity provider is back: within the relay's back-off the login works again.
    bed.idp.clear_faults()
    deadline = time.monotonic() + 30
    for _ in range(30):
        reply = login(relay, bed, own.name, own.password)
        if reply.startswith(b"a1 OK") or time.monotonic() > deadline:
            break
        assert reply.startswith(b"a1 NO [UNAVAILABLE]"), reply
        time.sleep(1)
    assert reply.startswith(b"a1 OK"), reply


def test_slow_identity_provider_stalls_only_its_own_login(relay, bed, user):
    """A refresh waiting on the IdP must not hold up another user's login in the same worker."""
    slow = relay.new_user()
    assert login(relay, bed, user.name, user.password).startswith(b"a1 OK")  # token in hand
    bed.idp.expire_access_tokens(slow.account)
    bed.idp.set_latency(4.0)
    waiting = RawImap.open(relay, bed, "tls")
    try:
        waiting.send(b"a1 LOGIN " + quoted(slow.name) + b" " + quoted(slow.password) + b"\r\n")
        time.sleep(0.5)  # the relay is now inside the refresh
        reply, elapsed = timed_login(relay, bed, user)
        assert reply.startswith(b"a1 OK"), reply
        assert elapsed < 3, f"another user's login waited {elapsed:.1f} s for a slow refresh"
        assert_logged_in(waiting.until(b"a1", timeout=30), b"a1")
    finally:
        waiting.close()


def test_shared_mailbox_access_withdrawn(relay, bed):
    """Office 365 refuses even a fresh token for a mailbox the account may no longer open. A new
    sign-in would not help, so the answer must not ask for one: AUTHORIZATIONFAILED, and the
    journal has the upstream's own answer and what to check."""
    delegate, shared = bed.new_account("delegate"), bed.new_account("shared")
    bed.idp.grant_mailbox_access(delegate, shared)
    user = relay.new_user(account=delegate, mailbox=shared)
    assert login(relay, bed, user.name, user.password).startswith(b"a1 OK")
    bed.idp.revoke_mailbox_access(delegate, shared)
    # Dovecot re-reads a grant file at most once a second: wait until it refuses by itself.
    token = bed.token_for(delegate)
    wait_for(lambda: not _dovecot_accepts(bed, shared, token), 10, "Dovecot to notice the withdrawn grant",
             interval=0.3)
    offset = len(relay.journal_text())
    reply, elapsed = timed_login(relay, bed, user)
    assert reply.startswith(b"a1 NO [AUTHORIZATIONFAILED]"), reply
    assert NEEDS_SIGNIN not in reply, reply
    assert elapsed < 10
    journal = journal_after(relay, offset)
    assert "upstream_refused_token" in journal  # it did try a fresh token first
    assert re.search(r"login_upstream_failed .*account=%s .*freshly refreshed token.*access to %s.*answer=\"R3 NO"
                     % (re.escape(delegate), re.escape(shared)), journal), journal[-3000:]


def _dovecot_accepts(bed, mailbox: str, token: str) -> bool:
    try:
        conn = bed.imap_login(mailbox, token)
    except imaplib.IMAP4.error:
        return False
    conn.logout()
    return True


def test_dovecot_stopped(relay, bed, user):
    assert login(relay, bed, user.name, user.password).startswith(b"a1 OK")
    bed.dovecot.stop()
    offset = len(relay.journal_text())
    for mode in ("tls", "plain"):
        reply, elapsed = timed_login(relay, bed, user, mode)
        assert reply.startswith(b"a1 NO [UNAVAILABLE]"), reply
        assert elapsed < 10, elapsed
    journal = journal_after(relay, offset)
    assert re.search(r"login_upstream_failed .*reason=\"cannot connect to", journal), journal[-3000:]
    bed.dovecot.start()
    assert login(relay, bed, user.name, user.password).startswith(b"a1 OK")


def test_upstream_session_ends_when_dovecot_stops(relay, bed, user):
    """After login a Dovecot going away closes the client's connection too (nothing half-open)."""
    client, lines = login(relay, bed, user.name, user.password, keep=True)
    try:
        assert_logged_in(lines, b"a1")
        session = re.findall(r"login_ok .*?session=(\S+)", relay.journal_text())[-1]
        assert client.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK")
        bed.dovecot.stop()
        assert client.closed(timeout=15), "the relay kept the client connection after Dovecot went"
    finally:
        client.close()
    wait_for(lambda: re.search(r'session_closed .*session=%s .*reason="upstream closed"' % re.escape(session),
                               relay.journal_text()), 15, "the relay to journal the session's end")


def test_client_going_away_closes_the_upstream_session(relay, bed, user):
    dovecot = (bed.upstream_host, bed.imaps_port)
    before = {sock.local for sock in relay_sockets(relay, peer=dovecot)}
    client, lines = login(relay, bed, user.name, user.password, keep=True)
    assert_logged_in(lines, b"a1")
    session = re.findall(r"login_ok .*?session=(\S+)", relay.journal_text())[-1]
    # This session's connection to Dovecot: open at both ends.
    legs = [sock.local for sock in relay_sockets(relay, peer=dovecot) if sock.local not in before]
    assert len(legs) == 1, relay_sockets(relay, peer=dovecot)
    ends = connection(legs[0], dovecot)
    assert sorted(sock.state for sock in ends) == ["ESTAB", "ESTAB"] and all(sock.pids for sock in ends), ends
    client.close()  # no LOGOUT: the program just quits
    wait_for(lambda: re.search(r'session_closed .*session=%s .*reason="client closed"' % re.escape(session),
                               relay.journal_text()), 15, "the relay to end the upstream session")
    # The relay closed it and Dovecot closed its end too: no process holds either end, at
    # most the relay's side lingers in TIME-WAIT.
    wait_for(lambda: all(sock.state == "TIME-WAIT" and not sock.pids for sock in connection(legs[0], dovecot)),
             15, f"the connection {legs[0]} -> {dovecot} to close at both ends")


# ------------------------------------------------------------------------------- bad input
def test_garbage_gets_bad_then_bye(relay, bed):
    with RawImap.open(relay, bed, "plain") as client:
        answers: List[bytes] = []
        for index in range(10):
            client.send(b"\x01\x02 garbage %d\r\n" % index if index % 2 else b"g%d FROB the thing\r\n" % index)
            answers.append(client.line())
        assert all(b" BAD " in line for line in answers), answers
        assert client.line().startswith(b"* BYE"), "no BYE after repeated garbage"
        assert client.closed()


def test_overlong_line_and_literal(relay, bed, user):
    with RawImap.open(relay, bed, "tls") as client:
        client.send(b"a1 NOOP " + b"x" * 100000 + b"\r\n")
        assert client.line().startswith(b"a1 BAD"), "over-long line"
        # The session goes on after it.
        assert client.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")
        assert_logged_in(client.command(b"a3", b"LOGIN " + quoted(user.name) + b" " + quoted(user.password)),
                         b"a3")
        select_and_logout(client)
    with RawImap.open(relay, bed, "tls") as client:
        client.send(b"a1 LOGIN {100000000+}\r\n")
        assert client.line().startswith(b"a1 BAD"), "a 100 MB literal must be refused"
        assert client.line().startswith(b"* BYE")
        assert client.closed()


# ------------------------------------------------------------------------------- the journal
def test_journal_holds_no_secret(relay, bed):
    """A full-debug journal of whole sessions (LOGIN forms, AUTHENTICATE, a failure, mail) holds
    neither the local password in any form nor the relay's Office 365 tokens."""
    password = "Journal " + AWKWARD_PASSWORD + " \u00df\u20ac"
    own = relay.new_user(password=password)
    offset = len(relay.journal_text())
    raw = password.encode("utf-8")
    with RawImap.open(relay, bed, "plain") as client:
        assert client.command(b"a0", b"LOGIN " + quoted(own.name) + b' "' + b"y" * 40 + b'"')[-1] \
            .startswith(b"a0 NO")
        assert client.command(b"a1", b"LOGIN " + quoted(own.name) + b" " + quoted(password + "x"))[-1] \
            .startswith(b"a1 NO")
        client.send(b"a2 LOGIN " + quoted(own.name) + b" {%d}\r\n" % len(raw))
        assert client.line().startswith(b"+")
        client.send(raw + b"\r\n")
        assert_logged_in(client.until(b"a2"), b"a2")
        select_and_logout(client)
    for mode in ("plain", "tls"):
        with RawImap.open(relay, bed, mode) as client:
            client.send(b"a1 AUTHENTICATE PLAIN\r\n")
            assert client.line().startswith(b"+")
            client.send(plain_ir(own.name, password) + b"\r\n")
            assert_logged_in(client.until(b"a1"), b"a1")
            select_and_logout(client)
        with RawImap.open(relay, bed, mode) as client:
            assert_logged_in(client.command(b"a1", b"AUTHENTICATE PLAIN " + plain_ir(own.name, password)), b"a1")
            select_and_logout(client)
    # A refresh on the way (upstream refuses, relay refreshes): tokens move through the journal's
    # neighbourhood then too.
    bed.idp.expire_access_tokens(own.account)
    with RawImap.open(relay, bed, "tls") as client:
        client.send(b"a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"
                    % (len(own.name), own.name.encode(), len(raw), raw))
        assert_logged_in(client.until(b"a1"), b"a1")
        select_and_logout(client)
    journal = journal_after(relay, offset)
    assert "login_ok" in journal and " wire " in journal, "the journal is not at full-debug"
    secrets = set(relay_secrets_of(relay, own.account))
    from relay.journal import b64_secret_fragments
    for secret in (password, password + "x", "y" * 40):
        secrets.update(b64_secret_fragments(secret))
        secrets.add(base64.b64encode(b"\0" + own.name.encode() + b"\0" + secret.encode("utf-8")).decode())
        secrets.add(quoted(secret).decode("utf-8"))
        secrets.update(part for part in secret.split() if len(part) >= 8)
    found = [secret for secret in secrets if secret in journal]
    assert not found, f"secrets in the journal: {found}"
    # Across everything this relay journaled: no bearer token, no XOAUTH2 string in base64.
    everything = relay.journal_text()
    assert not re.search(r"auth=Bearer\s*[^\s<]", everything, re.IGNORECASE)
    for account in set(re.findall(r"(?:account|mailbox)=(\S+@example\.test)", everything)):
        prefix = f"user={account}\x01auth=Bearer ".encode()
        b64 = base64.b64encode(prefix[: len(prefix) // 3 * 3]).decode()
        assert b64 not in everything, f"an XOAUTH2 string for {account} is in the journal"
    stderr = (relay.root / "serve.stderr").read_text(errors="replace")
    assert not [secret for secret in secrets if secret in stderr]


def relay_secrets_of(relay, account: str) -> List[str]:
    """The access and refresh tokens the relay holds for `account` (its token store, decrypted)."""
    from relay.tokens.store import TokenStore, account_key
    store = TokenStore(str(relay.root / "state"), create=False)
    text, _ = store.load(account_key(account))
    assert text, f"no stored tokens for {account}"
    cache = json.loads(text)
    secrets = [item["secret"] for kind in ("AccessToken", "RefreshToken", "IdToken")
               for item in cache.get(kind, {}).values() if item.get("secret")]
    assert any(len(secret) > 100 for secret in secrets), "no token found in the store"
    with open(store.token_path(account_key(account)), "rb") as handle:
        blob = handle.read()
    return secrets + [base64.b64encode(blob[:60]).decode()] + [s[:40] for s in secrets]


# ------------------------------------------------------------------------------- limits
@pytest.fixture(scope="module")
def capped(bed, tmp_path_factory):
    """A second relay with a per-mailbox cap of 2 and a 2-second pre-login limit."""
    instance = Relay(bed, tmp_path_factory.mktemp("capped"),
                     limits={"sessions_per_mailbox": 2, "preauth_timeout": 2}).start()
    yield instance
    instance.stop()


def test_preauth_timeout(capped, bed):
    for mode in ("plain", "tls"):
        with RawImap.open(capped, bed, mode) as client:
            started = time.monotonic()
            client.send(b"a1 NOOP\r\n")
            assert client.line().startswith(b"a1 OK")
            line = client.line(timeout=10)
            assert line.startswith(b"* BYE"), line
            assert client.closed()
            assert 1.5 < time.monotonic() - started < 6


def test_sessions_per_mailbox(capped, bed):
    own = capped.new_user()
    delegate = capped.new_user(account=bed.new_account("delegate"), mailbox=own.account)
    bed.idp.grant_mailbox_access(delegate.account, own.account)
    held = []
    try:
        for mode in ("tls", "plain"):
            client, lines = login(capped, bed, own.name, own.password, mode, keep=True)
            held.append(client)
            assert_logged_in(lines, b"a1")
        offset = len(capped.journal_text())
        # Past the cap: on either IMAP listener, and for another user of the same mailbox.
        for name, password, mode in ((own.name, own.password, "tls"), (own.name, own.password, "starttls"),
                                     (delegate.name, delegate.password, "tls")):
            reply = login(capped, bed, name, password, mode)
            assert reply.startswith(b"a1 NO [UNAVAILABLE]"), (mode, reply)
        assert "sessions already open for" in journal_after(capped, offset)
        # A slot comes free when a session ends.
        first = held.pop(0)
        first.command(b"z", b"LOGOUT")
        first.close()
        wait_for(lambda: login(capped, bed, own.name, own.password).startswith(b"a1 OK"), 10,
                 "a free session slot after a logout")
    finally:
        for client in held:
            client.close()
