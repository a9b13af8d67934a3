"""The plain per-account records (state, times, last error) and what `status` shows of them."""

from __future__ import annotations

import datetime
import os
from typing import List, Optional
from urllib.parse import unquote

from relay.config.models import Config
from relay.tokens.store import TokenStore

NEEDS_SIGN_IN = "needs sign-in"
STATES = ("ok", "refreshing", NEEDS_SIGN_IN, "error")


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
            "last_error": record.get("last_error") or (None if has_token or kind == "app" else "no sign-in yet"),
            "aadsts": record.get("aadsts"),
            "command": login_command_for(config, account or "ACCOUNT", app) if state == NEEDS_SIGN_IN else None,
        })
    return rows
