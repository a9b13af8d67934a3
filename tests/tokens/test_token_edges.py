"""Edges of sign-in and refresh: slow_down while polling, interaction_required without an
AADSTS code, refreshes that must not rewrite the token file, a sign-in without refresh token.

The sign-ins here go through the real `oauth-relay login` command, as an admin runs it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import pytest

from relay.tokens import TokenNeedsSignIn, TokenService, TokenUnavailable
from relay.tokens.cli import status_command
from relay.tokens.errors import PERMANENT_ERRORS, from_result
from relay.tokens.store import TokenStore, account_key
from tests.support import wait_for
from tests.tokens.helpers import ACCOUNT, age_access_tokens, edit_record, sign_in, stored_refresh_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
NAME = account_key(ACCOUNT)
NO_REFRESH_TOKEN = (
    "Sign-in failed: Entra ID returned no refresh token, so the relay could not keep this account signed "
    "in. Check the app registration: it needs the delegated permission offline_access (Microsoft Graph) "
    "and tenant policy must allow it; then sign in again\n")


def cli_login(relay, idp, client_id: str, account: str = ACCOUNT):
    """`oauth-relay login ACCOUNT --flow device_code`, the code approved as soon as it is shown."""
    login = subprocess.Popen([sys.executable, "-m", "relay", "login", account, "--flow", "device_code",
                              "--no-browser", "--config", relay.path],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        code = wait_for(lambda: [d for d in idp.device_codes()
                                 if d["client_id"] == client_id and d["status"] == "pending"], 20,
                        "the login command to request a device code")[-1]
        idp.approve_device_code(code["user_code"], account)
        output, _ = login.communicate(timeout=60)
    finally:
        if login.poll() is None:
            login.kill()
            login.communicate()
    return login.returncode, output


def file_state(store: TokenStore, name: str):
    """What a rewrite changes: inode, mtime, size (the store's generation) and the bytes."""
    with open(store.token_path(name), "rb") as handle:
        return store.generation(name), handle.read()


# ------------------------------------------------------------------------------ device code slow_down
def test_login_copes_with_slow_down(relay, idp):
    """Entra ID may answer a poll with slow_down; msal then polls 5 s slower and signs in."""
    app = relay.add_app(flow="device_code")
    config = relay.config()
    idp.fail_token_endpoint(status=400, error="slow_down", code=70016, count=1, grant_type=GRANT_DEVICE,
                            description="OAuth 2.0 device flow error. Polling too fast.")
    code, output = cli_login(relay, idp, app["client_id"])
    assert code == 0, output
    assert "Signed in: alice@contoso.com through app contoso." in output, output
    polls = [r for r in idp.token_requests(app["client_id"]) if r["grant_type"] == GRANT_DEVICE]
    assert len(polls) == 2, polls          # slow_down, then (approved) the tokens
    assert polls[1]["at"] - polls[0]["at"] >= 5, polls   # it did slow down (interval 1 s + 5 s)
    token = TokenService(config).access_token(ACCOUNT, "contoso")
    assert idp.introspect(token, "imap")["active"]


# ------------------------------------------------------------------------------ interaction_required
def test_interaction_required_without_a_code_is_classified():
    error = from_result({"error": "interaction_required",
                         "error_description": "The user must sign in again.", "error_codes": []}, "cmd")
    assert isinstance(error, TokenNeedsSignIn) and error.aadsts is None and error.command == "cmd"
    assert error.reason == PERMANENT_ERRORS["interaction_required"] + " (The user must sign in again.)"
    assert str(error) == error.reason + "; run: cmd"   # no "(AADSTS...)" made up


def test_interaction_required_without_a_code_needs_sign_in(relay, idp):
    relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    store = TokenStore(config.state_dir)
    before = file_state(store, NAME)
    idp.fail_token_endpoint(status=400, error="interaction_required", code=None, count=1,
                            grant_type="refresh_token", description="The user must sign in again.")
    service = TokenService(config)
    with pytest.raises(TokenNeedsSignIn) as caught:
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert caught.value.aadsts is None
    assert caught.value.reason.startswith(PERMANENT_ERRORS["interaction_required"] + " (The user must sign in again.")
    assert caught.value.command == f"oauth-relay login {ACCOUNT}"
    (row,) = service.accounts()
    assert (row["state"], row["aadsts"], row["command"]) == ("needs sign-in", None, f"oauth-relay login {ACCOUNT}")
    out = io.StringIO()
    assert status_command(config, None, out=out) == 1
    assert f"    {caught.value.reason}\n" in out.getvalue() and "AADSTS" not in out.getvalue(), out.getvalue()
    assert file_state(store, NAME) == before   # the failed refresh changed no token: file untouched
    assert stored_refresh_tokens(config, NAME)  # and the refresh token is kept


# ------------------------------------------------------------------------------ no needless rewrites
def test_refresh_without_a_cache_change_does_not_rewrite_the_token_file(relay, idp):
    relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    service = TokenService(config)
    store = service.store
    service.access_token(ACCOUNT, "contoso")
    signed_in = file_state(store, NAME)

    service.refresh_due()                     # nothing due: no request, no write
    assert idp.counts().get("token:refresh_token", 0) == 0
    assert file_state(store, NAME) == signed_in

    idp.fail_token_endpoint(status=503, retry_after=0, count=1, grant_type="refresh_token")
    with pytest.raises(TokenUnavailable):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert service.accounts()[0]["state"] == "error"   # the record says so ...
    assert file_state(store, NAME) == signed_in        # ... the token file is as it was

    edit_record(config, NAME, backoff_until=0)
    service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert file_state(store, NAME)[0] != signed_in[0]  # a real refresh does rewrite it: the check sees it


def test_waiting_for_another_processs_refresh_does_not_rewrite(relay, idp):
    """Two workers find the token expiring; one refreshes (slowly), the other waits for the lock,
    then takes the new token from the file without writing its own, older cache over it."""
    relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    age_access_tokens(config, NAME, left=120)
    first, second = TokenService(config), TokenService(config)
    writes = []
    real_save = second.store.save
    second.store.save = lambda name, text: writes.append(name) or real_save(name, text)
    idp.set_latency(1)
    tokens = {}
    refresher = threading.Thread(target=lambda: tokens.update(first=first.access_token(ACCOUNT, "contoso")))
    refresher.start()
    wait_for(lambda: first.store.busy(NAME), 10, "the first worker to start its refresh")
    tokens["second"] = second.access_token(ACCOUNT, "contoso")
    refresher.join(30)
    assert tokens["first"] == tokens["second"]
    assert idp.counts().get("token:refresh_token") == 1
    assert writes == []


# ------------------------------------------------------------------------------ no refresh token
def test_sign_in_without_a_refresh_token_is_a_setup_error(relay, idp):
    """An app registration without offline_access (or a tenant that forbids it) signs the user in
    but returns no refresh token: the relay could not keep the account signed in, so `login`
    stores nothing and tells the admin what to fix, instead of failing an hour later."""
    app = relay.add_app(flow="device_code")
    relay.users = {"bob": {"password": "$scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uT"
                                       "lfkvHR69bRP1pC2hlWk", "account": ACCOUNT}}
    config = relay.config()
    idp.set_refresh_tokens(False)
    code, output = cli_login(relay, idp, app["client_id"])
    assert code == 1, output
    assert output.endswith(NO_REFRESH_TOKEN), output
    assert "Traceback" not in output
    assert not os.path.exists(TokenStore(config.state_dir).token_path(NAME))   # nothing stored
    status = subprocess.run([sys.executable, "-m", "relay", "status", "--config", relay.path],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "no sign-in yet" in status.stdout, status.stdout + status.stderr
    idp.set_refresh_tokens(True)              # fixed in Entra ID: a new sign-in works
    sign_in(config, idp, flow="device_code")
    assert stored_refresh_tokens(config, NAME)
