"""The plain per-account records (state, times, last error) and what `status` shows of them."""

from __future__ import annotations

import datetime
import os
import shlex
from typing import List, Optional
from urllib.parse import unquote

from relay.config.models import Config
from relay.tokens.store import TokenStore

NEEDS_SIGN_IN = "needs sign-in"
NOT_CONFIGURED = "not configured"   # status only: the record's app is no longer in relay.yaml
STATES = ("ok", "refreshing", NEEDS_SIGN_IN, "error", NOT_CONFIGURED)


def iso(timestamp) -> Optional[str]:
    if not timestamp:
        return None
    moment = datetime.datetime.fromtimestamp(float(timestamp), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def login_command_for(config: Config, account: str, app_name: Optional[str]) -> str:
    command = f"oauth-relay login {account}"
    if app_name and len(config.apps) != 1:
        command += f" --app {app_name}"
    return command


def app_fix(app_name: str) -> str:
    """The fix when the app itself is the problem; for an app-only app that is always so
    (client credentials have no sign-in to repeat)."""
    return (f"check the client secret or certificate of app {app_name} (client_secret_file or "
            "certificate_file in relay.yaml, and the app registration in Entra ID), then run: "
            "oauth-relay reload")


def fix_for(config: Config, kind: str, account: Optional[str], app_name: Optional[str]) -> str:
    if kind == "app":
        return app_fix(app_name or "NAME")
    return login_command_for(config, account or "ACCOUNT", app_name)


def _removal(store: TokenStore, name: str) -> str:
    paths = (store.token_path(name), store.record_path(name), store.lock_path(name))
    return "rm -f -- " + " ".join(shlex.quote(path) for path in paths)


def describe(store: TokenStore, config: Config) -> List[dict]:
    """One row per store file; needs neither the key nor a lock."""
    rows = []
    for name in store.names():
        record = store.read_record(name)
        has_token = os.path.exists(store.token_path(name))
        kind = record.get("kind") or ("app" if name.startswith("app-") else "account")
        account = record.get("account") or (unquote(name[len("user-"):]) if kind == "account" else None)
        app = record.get("app") or (unquote(name[len("app-"):]) if kind == "app" else None)
        state = record.get("state") or ("ok" if has_token else NEEDS_SIGN_IN)
        if not has_token and kind == "account":
            state = NEEDS_SIGN_IN
        if store.busy(name):
            state = "refreshing"
        command = fix_for(config, kind, account, app) if state == NEEDS_SIGN_IN else None
        if state == "error" and record.get("setup_problem"):  # the app's credential file, for any kind
            command = app_fix(app or "NAME")
        last_error = record.get("last_error") or (None if has_token or kind == "app" else "no sign-in yet")
        configured = not app or app in config.apps
        if not configured:  # left over: nothing uses it, so it needs no attention
            was = f"{state}: {last_error}" if last_error else state
            last_error = f"app {app} is not in relay.yaml any more; left over (was {was})"
            state = NOT_CONFIGURED
            command = _removal(store, name)
        rows.append({
            "name": account if kind == "account" else app,
            "kind": kind,
            "account": account,
            "app": app,
            "flow": record.get("flow"),
            "first_obtained": iso(record.get("first_obtained")),
            "access_token_expires": iso(record.get("access_token_expires")),
            "refresh_token_rotated": iso(record.get("refresh_token_rotated")),
            "last_refresh": iso(record.get("last_refresh")),
            "state": state,
            "configured": configured,
            "last_error": last_error,
            "aadsts": record.get("aadsts"),
            "command": command,
        })
    return rows
