"""What Entra ID's errors become: sign-in needed (explained, with the fix) or try later."""

from __future__ import annotations

import io
import time

import pytest

from relay.tokens import TokenNeedsSignIn, TokenService, TokenUnavailable
from relay.tokens.cli import status_command
from relay.tokens.errors import EXPLAINED
from relay.tokens.store import account_key
from tests.tokens.helpers import ACCOUNT, edit_record, sign_in, stored_refresh_tokens

NAME = account_key(ACCOUNT)
PERMANENT = [
    ("invalid_grant", 700082), ("invalid_grant", 70043), ("invalid_grant", 50173),
    ("invalid_grant", 50133), ("unauthorized_client", 7000112), ("invalid_grant", 65001),
    ("invalid_client", 700025), ("invalid_client", 7000218), ("invalid_grant", 7000012),
    ("invalid_request", 50011), ("invalid_request", 900144), ("invalid_client", 7000215),
    ("interaction_required", 50076),
]


@pytest.fixture
def signed_in(relay, idp, tmp_path):
    relay.add_app(flow="auth_code")
    relay.tokens["notify"] = (f"printf '%s|%s|%s\\n' \"$OAUTH_RELAY_ACCOUNT\" \"$OAUTH_RELAY_STATE\" "
                              f"\"$OAUTH_RELAY_REASON\" >> {tmp_path / 'notified'}")
    config = relay.config()
    sign_in(config, idp)
    return config


def notified(tmp_path):
    path = tmp_path / "notified"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("error,code", PERMANENT, ids=[str(code) for _, code in PERMANENT])
def test_permanent_errors_need_sign_in(signed_in, idp, error, code):
    idp.fail_token_endpoint(status=400, error=error, code=code, count=1, grant_type="refresh_token")
    service = TokenService(signed_in)
    with pytest.raises(TokenNeedsSignIn) as caught:
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert caught.value.aadsts == code and caught.value.reason == EXPLAINED[code]
    assert caught.value.command == f"oauth-relay login {ACCOUNT}"
    calls = idp.counts()["token:refresh_token"]
    with pytest.raises(TokenNeedsSignIn):  # known bad: no new request, in any process
        TokenService(signed_in).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert idp.counts()["token:refresh_token"] == calls
    out = io.StringIO()
    assert status_command(signed_in, None, out=out) == 1
    assert "needs sign-in" in out.getvalue() and EXPLAINED[code] in out.getvalue()
    assert f"fix: oauth-relay login {ACCOUNT}" in out.getvalue()
    assert stored_refresh_tokens(signed_in, NAME)  # kept: never deleted


def test_revoked_sign_in_notifies_and_recovers(signed_in, idp, tmp_path):
    service = TokenService(signed_in)
    token = service.access_token(ACCOUNT, "contoso")
    idp.revoke(ACCOUNT, code=50173)
    with pytest.raises(TokenNeedsSignIn, match="password was changed"):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    service.notify.wait()
    assert notified(tmp_path) == [f"{ACCOUNT}|needs-sign-in|{EXPLAINED[50173]}"]
    with pytest.raises(TokenNeedsSignIn):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    service.notify.wait()
    assert len(notified(tmp_path)) == 1  # only on entering the state
    sign_in(signed_in, idp)  # `oauth-relay login`, another process
    fresh = service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert fresh != token and idp.introspect(fresh, "imap")["active"]
    assert notified(tmp_path)[-1] == f"{ACCOUNT}|ok|signed in again"
    assert service.accounts()[0]["state"] == "ok"


def test_cached_400_is_not_replayed_after_a_new_sign_in(signed_in, idp):
    # No Retry-After: msal keeps this 400 for 60 s and would answer it without a request.
    idp.fail_token_endpoint(status=400, error="invalid_grant", code=70043, count=1,
                            retry_after=None, grant_type="refresh_token")
    service = TokenService(signed_in)
    with pytest.raises(TokenNeedsSignIn):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    sign_in(signed_in, idp)
    service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert service.access_token(ACCOUNT, "contoso", force_refresh=True)


@pytest.mark.parametrize("status,error,retry_after", [
    (500, None, 0), (503, None, 30), (429, "temporarily_unavailable", 30), (400, "temporarily_unavailable", 0),
])
def test_transient_errors_keep_the_token(signed_in, idp, status, error, retry_after):
    service = TokenService(signed_in)
    token = service.access_token(ACCOUNT, "contoso")
    rts = stored_refresh_tokens(signed_in, NAME)
    idp.fail_token_endpoint(status=status, error=error, retry_after=retry_after, grant_type="refresh_token")
    with pytest.raises(TokenUnavailable):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert service.access_token(ACCOUNT, "contoso") == token
    assert stored_refresh_tokens(signed_in, NAME) == rts
    row, = service.accounts()
    assert row["state"] == "error" and row["last_error"]
    calls = idp.counts()["token:refresh_token"]
    edit_record(signed_in, NAME, backoff_until=0)
    with pytest.raises(TokenUnavailable):  # with Retry-After, msal replays it from its throttle cache
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert idp.counts()["token:refresh_token"] == calls + (0 if retry_after else 1)
    idp.clear_faults()
    edit_record(signed_in, NAME, backoff_until=0)
    if not retry_after:
        assert service.access_token(ACCOUNT, "contoso", force_refresh=True) != token
        assert service.accounts()[0]["state"] == "ok"


def test_retry_after_is_honoured_by_every_worker(signed_in, idp):
    """msal remembers a 429's Retry-After only in its own process; the relay's other workers
    (one per listener) must wait too, so the wait goes into the shared record."""
    imap_worker, smtp_worker = TokenService(signed_in), TokenService(signed_in)
    imap_worker.access_token(ACCOUNT, "contoso")
    idp.fail_token_endpoint(status=429, error="temporarily_unavailable", retry_after=120,
                            grant_type="refresh_token")
    try:
        with pytest.raises(TokenUnavailable):
            imap_worker.access_token(ACCOUNT, "contoso", force_refresh=True)
        calls = idp.counts()["token:refresh_token"]
        row, = smtp_worker.accounts()
        assert row["state"] == "error"
        with pytest.raises(TokenUnavailable, match="waiting before retrying"):
            smtp_worker.access_token(ACCOUNT, "contoso", force_refresh=True)
        assert idp.counts()["token:refresh_token"] == calls      # the other worker did not ask
        record = smtp_worker.store.read_record(NAME)
        assert 100 < float(record["backoff_until"]) - time.time() <= 120   # not the 5 s of our own
    finally:
        idp.clear_faults()


def test_unknown_app_and_store_problems(signed_in, idp):
    service = TokenService(signed_in)
    with pytest.raises(TokenNeedsSignIn, match="not in relay.yaml"):
        service.access_token(ACCOUNT, "nope")
    path = service.store.token_path(NAME)
    with open(path, "r+b") as handle:
        handle.seek(40)
        handle.write(b"\0\0\0\0")
    with pytest.raises(TokenNeedsSignIn, match="cannot be decrypted"):
        TokenService(signed_in).access_token(ACCOUNT, "contoso")
