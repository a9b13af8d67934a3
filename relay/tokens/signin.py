"""Getting the first tokens for an account: device code, auth code + PKCE, client
credentials, or a refresh token imported from another tool.

The interactive part runs against a scratch msal cache, without holding the account's lock
(a person may take minutes); the result is then merged into the store under the lock.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import webbrowser
from typing import Callable, Optional, TextIO

import msal

from relay import journal
from relay.config.models import AppConfig
from relay.tokens import apps as msal_apps
from relay.tokens.errors import TokenError, TokenStoreError, from_exception, from_result
from relay.tokens.loopback import RedirectReceiver, free_port, parse_redirect
from relay.tokens.service import RT, TokenService, search

SIGN_IN_WAIT = 900.0   # how long a person may take (Entra ID's device codes live 15 minutes)


def _log():
    # Bound per call: a logger bound before journal.configure() would keep the old setup.
    return journal.get_logger(component="tokens.signin")


class SignInError(Exception):
    """A sign-in that did not work, explained for the admin."""


def can_open_browser() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _device_code(application, scopes, account: str, out: TextIO, wait: float) -> dict:
    flow = application.initiate_device_flow(scopes=scopes)
    if "user_code" not in flow:
        return flow  # an error dict
    flow["expires_at"] = min(float(flow.get("expires_at") or time.time() + wait), time.time() + wait)
    minutes = max(1, int((flow["expires_at"] - time.time()) // 60))
    _say(out, f"To sign in {account}, open {flow['verification_uri']} in any browser and enter the "
              f"code {flow['user_code']} (valid for {minutes} minutes).")
    _say(out, "Waiting for the sign-in ...")
    return application.acquire_token_by_device_flow(flow)


def _auth_code(application, app: AppConfig, scopes, account: str, out: TextIO, wait: float,
               open_browser: bool, read_redirect: Optional[Callable[[], str]]) -> dict:
    try:
        receiver = None if read_redirect else RedirectReceiver(app.redirect_port)
    except OSError as exc:
        raise SignInError(f"cannot listen on 127.0.0.1:{app.redirect_port} for the browser's redirect "
                          f"({exc.strerror}); set redirect_port to a free port (0 picks one) or "
                          "paste the redirect address with --redirect-url-stdin")
    try:
        port = receiver.port if receiver else (app.redirect_port or free_port())
        with warnings.catch_warnings():
            # A pasted redirect must carry the code in its URL, so only the listener
            # gets form_post; msal warns about the query mode.
            warnings.simplefilter("ignore", UserWarning)
            flow = application.initiate_auth_code_flow(
                scopes, redirect_uri=f"http://localhost:{port}", login_hint=account,
                response_mode=None if read_redirect else "form_post")
        if "auth_uri" not in flow:
            return flow
        opened = open_browser and can_open_browser() and webbrowser.open(flow["auth_uri"])
        if opened:
            _say(out, f"A browser window opened; sign in there as {account}. If it did not, open:")
        else:
            _say(out, f"Open this address in a browser and sign in as {account}:")
        _say(out, "  " + flow["auth_uri"])
        if read_redirect:
            _say(out, f"The browser then fails to load http://localhost:{port}/...; that is expected. "
                      "Copy that whole address from the address bar and paste it here:")
            response = parse_redirect(read_redirect() or "")
        else:
            _say(out, f"Waiting for the browser to come back to http://localhost:{port} ...")
            response = receiver.wait(wait)
        if not response:
            raise SignInError("no sign-in arrived in time" if receiver else "that is not the redirect address")
        try:
            return application.acquire_token_by_auth_code_flow(flow, response)
        except ValueError:
            raise SignInError("the redirect does not belong to this sign-in (state mismatch); start again")
    finally:
        if receiver:
            receiver.close()


def _check_delegated(result: dict, cache, account: str) -> None:
    claims = result.get("id_token_claims") or {}
    who = claims.get("preferred_username") or claims.get("upn")
    if not who:
        raise SignInError("the sign-in returned no user name (no id_token with a preferred_username)")
    if who.lower() != account.strip().lower():
        raise SignInError(f"you signed in as {who}, not {account}; sign in again with {account} "
                          "(use a private browser window if another account is remembered)")
    if not search(cache, RT):
        raise SignInError(
            "Entra ID returned no refresh token, so the relay could not keep this account signed in. "
            "Check the app registration: it needs the delegated permission offline_access (Microsoft "
            "Graph) and tenant policy must allow it; then sign in again")


def sign_in(service: TokenService, account: str, app: AppConfig, flow: str, out: TextIO, *,
            refresh_token: Optional[str] = None, open_browser: bool = True,
            read_redirect: Optional[Callable[[], str]] = None, wait: float = SIGN_IN_WAIT) -> dict:
    """Run one sign-in and store it. Raises SignInError or TokenError with the explanation."""
    config = service.config
    cache = msal.SerializableTokenCache()
    delegated = flow != "client_credentials"
    scopes = msal_apps.scopes_for(config, app, flow)
    how = "refresh_token" if refresh_token is not None else flow  # an import runs no flow of the app's
    _log().info("sign-in started", account=account, app=app.name, flow=how)
    try:
        application = msal_apps.build_app(config, app, cache, service.http)
        if refresh_token is not None:
            result = application.acquire_token_by_refresh_token(refresh_token, scopes)
        elif flow == "client_credentials":
            result = application.acquire_token_for_client(scopes=scopes)
        elif flow == "device_code":
            result = _device_code(application, scopes, account, out, wait)
        else:
            result = _auth_code(application, app, scopes, account, out, wait, open_browser, read_redirect)
    except (SignInError, TokenError, TokenStoreError, KeyboardInterrupt):
        raise
    except Exception as exc:  # network, timeouts, 5xx, unusable answers
        raise from_exception(exc)
    if not result or "error" in result:
        raise from_result(result or {"error": "no_answer"}, None)
    if delegated:
        _check_delegated(result, cache, account)
    service.store_sign_in(account, app, how, cache, result)
    _log().info("sign-in stored", account=account, app=app.name, flow=how)
    return result
