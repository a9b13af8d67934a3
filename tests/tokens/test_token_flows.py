"""Each sign-in flow end to end, through msal, against the bed's identity provider."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import requests

from relay.tokens import TokenNeedsSignIn, TokenService
from relay.tokens.cli import login_command, status_command
from relay.tokens.store import TokenStore, account_key, app_key
from tests.tokens.helpers import ACCOUNT, TENANT, PasteInput, idp_calls, sign_in


def stored_cache(config, name) -> dict:
    text, _ = TokenStore(config.state_dir, config.tokens.key_file).load(name)
    return json.loads(text)


def refresh_tokens(config, name=None):
    cache = stored_cache(config, name or account_key(ACCOUNT))
    return [entry["secret"] for entry in cache.get("RefreshToken", {}).values()]


def test_device_code(relay, idp, terminal):
    relay.add_app(flow="device_code")
    config = relay.config()
    term = terminal()
    assert login_command(config, ACCOUNT, out=term) == 0, term.getvalue()
    assert "enter the code" in term.getvalue() and "Signed in" in term.getvalue()
    before = idp_calls(idp)
    service = TokenService(config)
    token = service.access_token(ACCOUNT, "contoso")
    assert idp.introspect(token, "imap")["active"] and idp.introspect(token, "smtp")["active"]
    assert idp_calls(idp) == before  # served from the stored cache, no network at all
    row, = service.accounts()
    assert (row["account"], row["app"], row["flow"], row["state"]) == (ACCOUNT, "contoso", "device_code", "ok")
    assert row["first_obtained"] and row["access_token_expires"] and row["refresh_token_rotated"]


def test_device_code_declined(relay, idp):
    relay.add_app(flow="device_code")
    config = relay.config()

    class Decline(io.StringIO):
        def write(self, text):
            if "enter the code" in text:
                idp.deny_device_code(None)
            return super().write(text)
    out = Decline()
    assert login_command(config, ACCOUNT, out=out) == 1
    assert "declined" in out.getvalue()
    assert TokenService(config).accounts() == []


def test_auth_code_through_loopback_redirect(relay, idp, terminal):
    relay.add_app(flow="auth_code")
    config = relay.config()
    term = terminal()
    assert login_command(config, ACCOUNT, open_browser=False, out=term) == 0, term.getvalue()
    term.join()
    redirect, = term.redirects
    assert redirect.startswith("http://localhost:") and "code=" in redirect
    assert "code_challenge=" in term.getvalue()  # PKCE; the IdP checks the verifier
    token = TokenService(config).access_token(ACCOUNT, "contoso")
    assert idp.introspect(token, "pop3")["active"]


def test_auth_code_with_pasted_redirect(relay, idp, terminal, monkeypatch):
    relay.add_app(flow="auth_code", redirect_port=0)
    config = relay.config()
    paste = PasteInput()
    monkeypatch.setattr(sys, "stdin", paste)
    term = terminal(paste_to=paste)
    assert login_command(config, ACCOUNT, open_browser=False, redirect_url_stdin=True, out=term) == 0, \
        term.getvalue()
    assert "paste it here" in term.getvalue()
    assert TokenService(config).access_token(ACCOUNT, "contoso")


def test_wrong_redirect_pasted(relay, idp, monkeypatch):
    relay.add_app(flow="auth_code")
    config = relay.config()
    monkeypatch.setattr(sys, "stdin", io.StringIO("http://localhost:1/?code=x&state=forged\n"))
    out = io.StringIO()
    assert login_command(config, ACCOUNT, open_browser=False, redirect_url_stdin=True, out=out) == 1
    assert "state mismatch" in out.getvalue()


def test_client_credentials_with_secret(relay, idp):
    relay.add_app(name="daemon", type="confidential", flow="client_credentials", secret="s3cr3t-" + "v" * 30)
    config = relay.config()
    out = io.StringIO()
    assert login_command(config, "anyone@contoso.com", out=out) == 0, out.getvalue()
    assert "No sign-in is needed" in out.getvalue()
    before = idp_calls(idp)
    token = TokenService(config).access_token("shared@contoso.com", "daemon")
    assert idp_calls(idp) == before
    assert idp.introspect(token, "imap")["active"]
    assert stored_cache(config, app_key("daemon"))["AccessToken"]


def test_client_credentials_with_certificate_needs_no_login(relay, idp):
    from tests.bed.certs import new_client_certificate
    relay.add_app(name="daemon", type="confidential", flow="client_credentials",
                  certificate=new_client_certificate())
    config = relay.config()
    service = TokenService(config)
    token = service.access_token("shared@contoso.com", "daemon")
    assert idp.counts().get("token:client_credentials") == 1
    assert service.access_token("other@contoso.com", "daemon") == token  # one token per app
    forced = service.access_token("shared@contoso.com", "daemon", force_refresh=True)
    assert forced != token and idp.counts().get("token:client_credentials") == 2
    assert idp.introspect(forced, "smtp")["active"]
    assert [row["kind"] for row in service.accounts()] == ["app"]


def test_refresh_token_import(relay, idp, monkeypatch):
    app = relay.add_app(flow="device_code")
    config = relay.config()
    # "Another tool" got a refresh token for the same app registration (here by ROPC).
    answer = requests.post(idp.token_endpoint(TENANT), verify=idp.test_ca_file, timeout=10, data={
        "grant_type": "password", "client_id": app["client_id"], "username": ACCOUNT, "password": "pw",
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access openid profile"})
    imported = answer.json()["refresh_token"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(imported + "\n"))
    out = io.StringIO()
    assert login_command(config, ACCOUNT, refresh_token_stdin=True, out=out) == 0, out.getvalue()
    assert "Refresh token imported" in out.getvalue()
    assert refresh_tokens(config) and imported not in refresh_tokens(config)  # rotated at once
    service = TokenService(config)
    assert service.access_token(ACCOUNT, "contoso")
    assert service.accounts()[0]["flow"] == "refresh_token"


def test_public_and_confidential_mix_ups_are_explained(relay, idp):
    relay.add_app(name="pub", type="confidential", idp_type="public", flow="auth_code", secret="x" * 20)
    relay.add_app(name="conf", type="public", idp_type="confidential", flow="auth_code", secret="y" * 20)
    del relay.apps["conf"]["client_secret_file"]
    config = relay.config()
    from tests.tokens.helpers import Terminal
    for name, code in (("pub", "700025"), ("conf", "7000218")):
        term = Terminal(idp)
        assert login_command(config, ACCOUNT, app_name=name, open_browser=False, out=term) == 1
        term.join()
        assert f"AADSTS{code}" in term.getvalue()
        assert ("type: public" if code == "700025" else "Allow public client flows") in term.getvalue()


def test_usage_errors(relay, idp):
    relay.add_app(name="one")
    relay.add_app(name="two")
    config = relay.config()
    out = io.StringIO()
    assert login_command(config, ACCOUNT, out=out) == 2 and "--app" in out.getvalue()
    assert login_command(config, "no-at-sign", app_name="one", out=out) == 2
    assert login_command(config, ACCOUNT, app_name="one", flow="client_credentials", out=out) == 2
    assert login_command(config, ACCOUNT, app_name="nope", out=out) == 2


SOME_HASH = "$scrypt$ln=4,r=8,p=1$JLACrJGojW5/swphwrPPOA$5ibeQkQ/lFMdKbvUeFJDP8uTlfkvHR69bRP1pC2hlWk"  # of no one's password; only its shape matters here


def test_no_sign_in_yet_and_status(relay, idp):
    relay.add_app()
    relay.users = {"bob": {"password": SOME_HASH, "account": ACCOUNT},
                   "carol": {"password": SOME_HASH, "account": "carol@contoso.com"}}
    config = relay.config()
    service = TokenService(config)
    try:
        service.access_token(ACCOUNT, "contoso")
        raise AssertionError("expected TokenNeedsSignIn")
    except TokenNeedsSignIn as exc:
        assert exc.reason == "no sign-in yet" and exc.command == f"oauth-relay login {ACCOUNT}"
    sign_in(config, idp)
    from relay import activity
    activity.record_login(config.state_dir, "bob", "imap")
    from relay.config import load_config
    _, users = load_config(relay.path)
    out = io.StringIO()
    assert status_command(config, users, out=out) == 1  # carol has not signed in
    text = out.getvalue()
    assert "alice@contoso.com" in text and "carol@contoso.com" in text and "no sign-in yet" in text
    assert "fix: oauth-relay login carol@contoso.com" in text
    assert "bob" in text and "never" in text
    out = io.StringIO()
    status_command(config, users, as_json=True, out=out)
    data = json.loads(out.getvalue())
    states = {row["name"]: row["state"] for row in data["accounts"]}
    assert states == {ACCOUNT: "ok", "carol@contoso.com": "needs sign-in"}
    bob = [u for u in data["users"] if u["user"] == "bob"][0]
    assert set(bob["last_login"]) == {"imap"}


def test_store_files_are_private_and_sealed(relay, idp):
    relay.add_app()
    config = relay.config()
    sign_in(config, idp)
    token = TokenService(config).access_token(ACCOUNT, "contoso")
    state = Path(config.state_dir)
    for path in [state / "token.key", *sorted((state / "tokens").iterdir())]:
        assert path.stat().st_mode & 0o077 == 0, path
    raw = (state / "tokens" / (account_key(ACCOUNT) + ".token")).read_bytes()
    for secret in [token, *refresh_tokens(config)]:
        assert secret[:24].encode() not in raw
    assert b"RefreshToken" not in raw and b"secret" not in raw


def test_confidential_app_signs_in_users_too(relay, idp, terminal):
    relay.add_app(name="web", type="confidential", flow="device_code", secret="w" * 32)
    config = relay.config()
    term = terminal()
    assert login_command(config, ACCOUNT, out=term) == 0, term.getvalue()
    term = terminal(account="bob@contoso.com")
    assert login_command(config, "bob@contoso.com", flow="auth_code", open_browser=False, out=term) == 0
    service = TokenService(config)
    for account in (ACCOUNT, "bob@contoso.com"):
        first = service.access_token(account, "web")
        assert service.access_token(account, "web", force_refresh=True) != first


def test_status_shows_refreshing_while_a_process_holds_the_lock(relay, idp):
    relay.add_app()
    config = relay.config()
    sign_in(config, idp)
    store = TokenStore(config.state_dir)
    with store.lock(account_key(ACCOUNT), 5):
        out = io.StringIO()
        assert status_command(config, None, as_json=True, out=out) == 0
        assert json.loads(out.getvalue())["accounts"][0]["state"] == "refreshing"
