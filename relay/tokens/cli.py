"""`oauth-relay login` and `oauth-relay status`, called by relay/cli.py.

Exit codes: 0 done / all accounts fine; 1 failed / some account needs attention; 2 usage.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import List, Optional, TextIO

from relay import activity
from relay.config.models import FLOWS, Config, Users
from relay.tokens.errors import TokenNeedsSignIn, TokenStoreError, TokenUnavailable
from relay.tokens.records import NEEDS_SIGN_IN, NOT_CONFIGURED, describe, login_command_for
from relay.tokens.service import TokenService
from relay.tokens.signin import SignInError, sign_in
from relay.tokens.store import TokenStore


def _pick_app(config: Config, app_name: Optional[str]):
    if app_name:
        app = config.apps.get(app_name)
        if app is None:
            known = ", ".join(sorted(config.apps)) or "none"
            return None, f"unknown app {app_name!r} (apps in relay.yaml: {known})"
        return app, None
    if len(config.apps) == 1:
        return next(iter(config.apps.values())), None
    if not config.apps:
        return None, "relay.yaml has no apps; register one in Entra ID and add it under `apps:`"
    return None, f"relay.yaml has several apps; choose one with --app ({', '.join(sorted(config.apps))})"


def _read_secret_line(prompt: str) -> str:
    if getattr(sys.stdin, "isatty", lambda: False)():
        return getpass.getpass(prompt)  # typed or pasted at a terminal: do not echo it
    return sys.stdin.readline()


def login_command(config: Config, account: str, app_name: Optional[str] = None, flow: Optional[str] = None,
                  refresh_token_stdin: bool = False, open_browser: bool = True,
                  redirect_url_stdin: bool = False, out: TextIO = sys.stdout) -> int:
    app, problem = _pick_app(config, app_name)
    flow = flow or (app.flow if app else None)
    if problem is None and flow not in FLOWS:
        problem = f"unknown flow {flow!r} (choose {', '.join(FLOWS)})"
    if problem is None and flow == "client_credentials" and not app.confidential:
        problem = f"flow client_credentials needs a confidential app; {app.name} is public"
    if problem is None and flow != "client_credentials" and "@" not in account:
        problem = f"{account!r} is not an Office 365 account such as alice@contoso.com"
    if problem is None and refresh_token_stdin and flow == "client_credentials":
        problem = "--refresh-token-stdin imports a user's sign-in; it does not apply to client_credentials"
    if problem:
        out.write(f"error: {problem}\n")
        return 2
    refresh_token = None
    if refresh_token_stdin:
        refresh_token = _read_secret_line("Refresh token (not shown): ").strip()
        if not refresh_token:
            out.write("error: no refresh token on standard input\n")
            return 2
    read_redirect = sys.stdin.readline if redirect_url_stdin else None
    try:
        service = TokenService(config)
    except TokenStoreError as exc:
        out.write(f"error: {exc}\n")
        return 1
    try:
        result = sign_in(service, account, app, flow, out, refresh_token=refresh_token,
                         open_browser=open_browser, read_redirect=read_redirect)
    except KeyboardInterrupt:
        out.write("\nSign-in cancelled; nothing was stored.\n")
        return 130
    except (SignInError, TokenStoreError) as exc:
        out.write(f"Sign-in failed: {exc}\n")
        return 1
    except TokenNeedsSignIn as exc:
        code = f" (AADSTS{exc.aadsts})" if exc.aadsts else ""
        out.write(f"Sign-in failed: {exc.reason}{code}.\n")
        return 1
    except TokenUnavailable as exc:
        out.write(f"Sign-in failed: {exc}. Try again in a moment.\n")
        return 1
    finally:
        service.notify.wait()
    minutes = int(float(result.get("expires_in") or 0) // 60)
    if flow == "client_credentials":
        out.write(f"App-only token for {app.name} obtained (valid {minutes} min). No sign-in is "
                  "needed: the relay fetches new ones itself.\n")
    else:
        how = "Refresh token imported" if refresh_token else "Signed in"
        out.write(f"{how}: {account} through app {app.name}. The relay keeps the sign-in "
                  "fresh by itself; run `oauth-relay status` to check on it.\n")
    return 0


def _missing_rows(config: Config, users: Optional[Users], rows: List[dict]) -> List[dict]:
    """Accounts that users name but that have no tokens yet (through a configured app)."""
    have = {(r["kind"], r["name"]) for r in rows if r["state"] != NOT_CONFIGURED}
    extra, seen = [], set()
    for user in (users.by_name.values() if users else ()):
        app = config.apps.get(user.app)
        if app is None:
            continue
        app_only = app.flow == "client_credentials"
        key = ("app", app.name) if app_only else ("account", user.account.strip().lower())
        if key in have or key in seen:
            continue
        seen.add(key)
        extra.append({
            "name": key[1], "kind": key[0], "account": None if app_only else key[1], "app": app.name,
            "flow": app.flow, "configured": True, "first_obtained": None, "access_token_expires": None,
            "refresh_token_rotated": None, "last_refresh": None,
            "state": "ok" if app_only else NEEDS_SIGN_IN,
            "last_error": "fetched on first use" if app_only else "no sign-in yet", "aadsts": None,
            "command": None if app_only else login_command_for(config, user.account, app.name),
        })
    return extra


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def status_command(config: Config, users: Optional[Users], as_json: bool = False,
                   out: TextIO = sys.stdout) -> int:
    store = TokenStore(config.state_dir, config.tokens.key_file, create=False)
    rows = describe(store, config)
    rows += _missing_rows(config, users, rows)
    logins = activity.last_logins(config.state_dir)
    local = []
    for name in sorted(users.by_name if users else ()):
        user = users.by_name[name]
        local.append({"user": name, "account": user.account, "app": user.app,
                      "protocols": list(user.protocols), "last_login": logins.get(name, {})})
    # A record left over from an app no longer in relay.yaml needs no attention: nothing uses it.
    healthy = all(row["state"] in ("ok", "refreshing", NOT_CONFIGURED) for row in rows)
    if as_json:
        json.dump({"accounts": rows, "users": local}, out, indent=2)
        out.write("\n")
        return 0 if healthy else 1
    dash = lambda value: value or "-"
    if rows:
        lines = [["ACCOUNT", "APP", "FLOW", "FIRST OBTAINED", "TOKEN EXPIRES", "REFRESH ROTATED", "STATE"]]
        for row in rows:
            lines.append([row["name"] + (" (app-only)" if row["kind"] == "app" else ""), dash(row["app"]),
                          dash(row["flow"]), dash(row["first_obtained"]), dash(row["access_token_expires"]),
                          dash(row["refresh_token_rotated"]), row["state"]])
        table = _table(lines)
        out.write(table[0] + "\n")
        for row, line in zip(rows, table[1:]):
            out.write(line + "\n")
            if row["last_error"] and row["state"] != "refreshing":
                code = f" (AADSTS{row['aadsts']})" if row["aadsts"] else ""
                out.write(f"    {row['last_error']}{code}\n")
            if row["state"] == NOT_CONFIGURED:
                unused = "if no user needs it any more, " if row["kind"] == "account" else ""
                out.write(f"    {unused}remove it with: {row['command']}\n")
            elif row["command"]:
                out.write(f"    fix: {row['command']}\n")
    else:
        out.write("No accounts signed in yet. Sign one in with: oauth-relay login ACCOUNT\n")
    if local:
        out.write("\n")
        lines = [["LOCAL USER", "ACCOUNT", "PROTOCOL", "LAST LOGIN"]]
        for user in local:
            for protocol in user["protocols"]:
                lines.append([user["user"], user["account"], protocol,
                              user["last_login"].get(protocol, "never")])
        out.write("\n".join(_table(lines)) + "\n")
    return 0 if healthy else 1
