"""Small pieces without the bed: error classification, cache merge, sign-in checks."""

from __future__ import annotations

import json

import msal
import pytest
import requests
from msal.exceptions import MsalServiceError

from relay.tokens.errors import (EXPLAINED, TokenNeedsSignIn, TokenUnavailable, from_exception,
                                 from_result)
from relay.tokens.http import make_http_client
from relay.tokens.service import _merge
from relay.tokens.signin import SignInError, _check_delegated


def test_from_result():
    needs = from_result({"error": "invalid_grant", "error_description": "AADSTS700082: gone. Trace ID: x"}, "cmd")
    assert isinstance(needs, TokenNeedsSignIn) and needs.aadsts == 700082 and needs.command == "cmd"
    assert needs.reason == EXPLAINED[700082] and "AADSTS700082" in str(needs) and "run: cmd" in str(needs)
    generic = from_result({"error": "invalid_grant", "error_codes": [9002313]}, None)
    assert isinstance(generic, TokenNeedsSignIn) and generic.aadsts == 9002313
    later = from_result({"error": "temporarily_unavailable", "error_description": "busy"}, None)
    assert isinstance(later, TokenUnavailable)


def test_from_exception():
    assert "in time" in from_exception(requests.ReadTimeout()).reason
    assert "cannot reach" in from_exception(requests.ConnectionError()).reason
    replayed = MsalServiceError("HTTP Error: 503", error=None, error_description=None)
    assert "Retry-After" in from_exception(replayed).reason
    assert "unusable" in from_exception(ValueError("Expecting value")).reason


def test_merge_keeps_other_apps_and_replaces_this_ones():
    base = {"RefreshToken": {"old-a": {"client_id": "a", "home_account_id": "h1", "secret": "1"},
                             "b": {"client_id": "b", "home_account_id": "h1", "secret": "2"}}}
    new = {"RefreshToken": {"new-a": {"client_id": "a", "home_account_id": "h2", "secret": "3"}}}
    merged = json.loads(_merge(json.dumps(base), json.dumps(new)))["RefreshToken"]
    assert set(merged) == {"b", "new-a"}


def test_sign_in_checks():
    cache = msal.SerializableTokenCache()
    with pytest.raises(SignInError, match="no refresh token"):
        _check_delegated({"id_token_claims": {"preferred_username": "A@x.com"}}, cache, "a@x.com")
    with pytest.raises(SignInError, match="you signed in as b@x.com"):
        _check_delegated({"id_token_claims": {"preferred_username": "b@x.com"}}, cache, "a@x.com")
    with pytest.raises(SignInError, match="no user name"):
        _check_delegated({}, cache, "a@x.com")


def test_http_client_ignores_ca_environment(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent")
    session = make_http_client("/some/ca.pem", 3, 7)
    assert session.trust_env is False and session.verify == "/some/ca.pem" and session.timeout == (3, 7)
    assert make_http_client(None).verify is True
    session.close()
