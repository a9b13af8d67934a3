"""At full-debug the journal shows what happened, and no token, code or secret."""

from __future__ import annotations

import io
import sys

import pytest
import requests

from relay import journal
from relay.tokens import TokenNeedsSignIn, TokenService
from relay.tokens.cli import login_command
from relay.tokens.store import account_key, app_key
from tests.tokens.helpers import ACCOUNT, TENANT, Terminal, stored_cache


def secrets_in(cache: dict):
    for kind in ("AccessToken", "RefreshToken", "IdToken"):
        for entry in cache.get(kind, {}).values():
            yield entry["secret"]


def test_no_secret_reaches_the_journal(relay, idp, journal_file, monkeypatch):
    public = relay.add_app(name="contoso", flow="device_code")
    client_secret = "Zq8~" + "s3cr3t" * 6
    relay.add_app(name="daemon", type="confidential", flow="client_credentials", secret=client_secret)
    config = relay.config()
    found = [client_secret]

    term = Terminal(idp)
    assert login_command(config, ACCOUNT, app_name="contoso", out=term) == 0
    term.join()
    term = Terminal(idp, account="bob@contoso.com")
    assert login_command(config, "bob@contoso.com", app_name="contoso", flow="auth_code",
                         open_browser=False, out=term) == 0
    term.join()
    found += [code for code in term.codes if code]
    answer = requests.post(idp.token_endpoint(TENANT), verify=idp.test_ca_file, timeout=10, data={
        "grant_type": "password", "client_id": public["client_id"], "username": "carol@contoso.com",
        "password": "pw", "scope": "https://outlook.office.com/SMTP.Send offline_access openid profile"})
    imported = answer.json()["refresh_token"]
    found.append(imported)
    monkeypatch.setattr(sys, "stdin", io.StringIO(imported + "\n"))
    assert login_command(config, "carol@contoso.com", app_name="contoso", refresh_token_stdin=True,
                         out=io.StringIO()) == 0

    service = TokenService(config)
    for account in (ACCOUNT, "bob@contoso.com", "carol@contoso.com"):
        found.append(service.access_token(account, "contoso"))
        found.append(service.access_token(account, "contoso", force_refresh=True))
    found.append(service.access_token("shared@contoso.com", "daemon", force_refresh=True))
    idp.revoke("bob@contoso.com", code=50173)
    with pytest.raises(TokenNeedsSignIn):
        service.access_token("bob@contoso.com", "contoso", force_refresh=True)
    for name in (account_key(ACCOUNT), account_key("bob@contoso.com"), account_key("carol@contoso.com"),
                 app_key("daemon")):
        found += list(secrets_in(stored_cache(config, name)))

    with open(journal_file, encoding="utf-8") as handle:
        text = handle.read()
    assert "token refreshed" in text and "account needs sign-in" in text and "idp request" in text
    assert len(found) > 15
    for secret in found:
        for form in journal.b64_secret_fragments(secret) + [secret[:20], secret[-20:]]:
            assert form not in text, f"a secret leaked into the journal: {form[:6]}..."
