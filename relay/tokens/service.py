"""TokenService: access tokens for the relay's workers, refreshed and shared safely.

Fast path: a cached token with minutes left is returned from memory, no lock, no network
(after a cheap stat() to notice another process's rewrite). Slow path: take the account's
file lock, re-read the file, and only then decide: if another process refreshed meanwhile,
use its token; otherwise refresh through msal and write the result before unlocking. So
three workers that need a new token at once make one refresh, and a rotated refresh token
is always the one on disk.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import msal

from relay import journal
from relay.config.models import AppConfig, Config
from relay.tokens import apps as msal_apps
from relay.tokens.errors import (TokenError, TokenNeedsSignIn, TokenSetupError, TokenStoreError,
                                 TokenUnavailable, from_exception, from_result)
from relay.tokens.http import make_http_client
from relay.tokens.notify import Notifier
from relay.tokens.records import NEEDS_SIGN_IN, app_fix, describe, fix_for, login_command_for
from relay.tokens.store import TokenStore, account_key, app_key

MIN_LEFT = 360.0      # msal itself treats a token with under 300 s left as expired
FRESH_GRACE = 60.0    # a token fetched this recently is used even if it is short-lived
AT = msal.TokenCache.CredentialType.ACCESS_TOKEN
RT = msal.TokenCache.CredentialType.REFRESH_TOKEN
ACCOUNT = msal.TokenCache.CredentialType.ACCOUNT


def search(cache, credential_type, target=None, query=None) -> list:
    finder = getattr(cache, "search", None)  # msal < 1.25 only has the older find()
    return list(finder(credential_type, target=target, query=query) if finder
                else cache.find(credential_type, target=target, query=query))


def usable(at: Optional[dict], now: float) -> bool:
    if not at:
        return False
    left = int(at["expires_on"]) - now
    return left > MIN_LEFT or (now - int(at.get("cached_at", 0)) < FRESH_GRACE and left > 30)


class _Entry:
    """One store file in this process: its msal cache and the msal apps bound to it."""

    def __init__(self, name: str, kind: str, label: str):
        self.name, self.kind, self.label = name, kind, label
        self.cache = msal.SerializableTokenCache()
        self.generation: object = "unloaded"
        self.apps: Dict[AppConfig, object] = {}
        self.lock = threading.RLock()     # in-memory state only; never held across network
        self.last_given: Optional[str] = None


class TokenService:
    BACKOFF_FIRST = 5.0       # seconds after the first transient failure, doubling ...
    BACKOFF_MAX = 300.0       # ... up to this

    def __init__(self, config: Config):
        self.config = config
        self.store = TokenStore(config.state_dir, config.tokens.key_file)
        up = config.upstream
        self.http = make_http_client(up.ca_file, up.connect_timeout, up.login_timeout)
        # A refresh may take two requests (metadata, token); waiters give up after that.
        self.lock_timeout = 2 * (up.connect_timeout + up.login_timeout) + 5
        self.notify = Notifier(config.tokens.notify)
        self._entries: Dict[str, _Entry] = {}
        self._entries_lock = threading.Lock()
        self.started = time.time()   # a start or reload: see _still_applies

    @property
    def _log(self):
        return journal.get_logger(component="tokens")  # bound late: journal may be reconfigured

    # -- the API ------------------------------------------------------------------------------
    def access_token(self, account: str, app_name: str, force_refresh: bool = False) -> str:
        app = self._app(app_name, account)
        entry = self._entry_for(account, app)
        scopes = msal_apps.scopes_for(self.config, app, app.flow)
        try:
            with entry.lock:
                self._sync(entry)
                at = self._find_token(entry, app, scopes)
                if not force_refresh and usable(at, time.time()):
                    entry.last_given = at["secret"]
                    return at["secret"]
                refused = (entry.last_given or (at or {}).get("secret")) if force_refresh else None
            reuse = lambda found, record: usable(found, time.time()) and found["secret"] != refused
            return self._refresh(entry, app, account, scopes, reuse, "forced" if force_refresh else "expiring")
        except TokenStoreError as exc:
            fix = ("remove the damaged token file; the relay then fetches a new app-only token"
                   if entry.kind == "app" else login_command_for(self.config, account, app.name))
            raise TokenSetupError(f"the stored sign-in cannot be used: {exc}", None, fix)

    def refresh_due(self) -> None:
        """Refresh what expires within refresh_ahead or was not refreshed for refresh_every."""
        for name in self.store.names():
            record = self.store.read_record(name)
            app = self.config.apps.get(record.get("app", ""))
            if not app or "kind" not in record:
                continue
            if self._waiting(record) and self._still_applies(record["kind"], app, record):
                continue  # logged already; retry when the wait is over (or the app's settings change)
            label = record.get("account") if record["kind"] == "account" else app.name
            entry = self._entry(name, record["kind"], label)
            scopes = msal_apps.scopes_for(self.config, app, "client_credentials" if entry.kind == "app" else "")
            try:
                with entry.lock:
                    self._sync(entry)
                    at = self._find_token(entry, app, scopes)
                if not self._due(entry, record, at):
                    continue
                self._refresh(entry, app, label, scopes,
                              lambda found, rec: not self._due(entry, rec, found), "due")
            except TokenError as exc:
                self._log.warning("scheduled refresh failed", account=label, app=app.name, error=str(exc))
            except TokenStoreError as exc:
                self._log.error("token store problem", account=label, error=str(exc))

    def accounts(self) -> List[dict]:
        return describe(self.store, self.config)

    # -- sign-in support (relay.tokens.signin) ------------------------------------------------
    def store_sign_in(self, account: str, app: AppConfig, flow: str, cache, result: dict) -> None:
        """Merge a fresh sign-in's cache into the account's file, under the lock."""
        entry = self._entry_for(account, app, flow)
        now = time.time()
        with self.store.lock(entry.name, self.lock_timeout):
            with entry.lock:
                self._sync(entry)
                merged = _merge(entry.cache.serialize(), cache.serialize())
                entry.cache.deserialize(merged)
                entry.generation = self.store.save(entry.name, merged)
                entry.last_given = result.get("access_token")
            record = self.store.read_record(entry.name)
            before = record.get("state")
            record.update(self._identity(entry, app, flow), first_obtained=now, last_refresh=now,
                          access_token_expires=now + float(result.get("expires_in") or 0))
            if entry.kind == "account":
                record["refresh_token_rotated"] = now
            self._mark_ok(entry, record, before)
        self._log.info("signed in", account=entry.label, app=app.name, flow=flow)

    # -- internals ----------------------------------------------------------------------------
    def _app(self, app_name: str, account: str) -> AppConfig:
        app = self.config.apps.get(app_name)
        if app is None:
            raise TokenNeedsSignIn(f"app {app_name!r} is not in relay.yaml", None,
                                   f"oauth-relay login {account} --app NAME")
        return app

    def _entry(self, name: str, kind: str, label: str) -> _Entry:
        with self._entries_lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = _Entry(name, kind, label)
            return entry

    def _entry_for(self, account: str, app: AppConfig, flow: Optional[str] = None) -> _Entry:
        if (flow or app.flow) == "client_credentials":  # app-only: one file per app
            return self._entry(app_key(app.name), "app", app.name)
        return self._entry(account_key(account), "account", account.strip().lower())

    def _sync(self, entry: _Entry) -> None:
        """Re-read the file if another process replaced it (call with entry.lock held)."""
        generation = self.store.generation(entry.name)
        if generation == entry.generation:
            return
        text, generation = self.store.load(entry.name)
        entry.cache.deserialize(text or "")
        entry.generation = generation

    def _reload(self, entry: _Entry) -> None:
        with entry.lock:
            entry.generation = "unloaded"   # drop in-memory changes of a failed attempt
            self._sync(entry)

    def _home_account_id(self, entry: _Entry, client_id: str) -> Optional[str]:
        ids = [a.get("home_account_id") for a in search(entry.cache, ACCOUNT)
               if str(a.get("username", "")).lower() == entry.label]
        for hid in ids:  # prefer the identity that holds this app's refresh token
            if search(entry.cache, RT, query={"client_id": client_id, "home_account_id": hid}):
                return hid
        return ids[0] if ids else None

    def _find_token(self, entry: _Entry, app: AppConfig, scopes: List[str]) -> Optional[dict]:
        query = {"client_id": app.client_id}
        if entry.kind == "account":
            hid = self._home_account_id(entry, app.client_id)
            if hid is None:
                return None
            query["home_account_id"] = hid
        found = search(entry.cache, AT, target=scopes, query=query)
        return max(found, key=lambda at: int(at["expires_on"])) if found else None

    def _due(self, entry: _Entry, record: dict, at: Optional[dict]) -> bool:
        now = time.time()
        if at is None:
            return True
        # A token that lives less than twice refresh_ahead is renewed at half-life, else
        # every process would find a fresh token "due" again at once.
        lifetime = int(at["expires_on"]) - int(at.get("cached_at") or 0)
        if int(at["expires_on"]) - now < min(self.config.tokens.refresh_ahead, lifetime / 2):
            return True
        if at.get("refresh_on") and int(at["refresh_on"]) < now:
            return True
        return entry.kind == "account" and now - float(record.get("last_refresh") or 0) >= \
            self.config.tokens.refresh_every

    def _msal_app(self, entry: _Entry, app: AppConfig):
        if app not in entry.apps:  # building one fetches the authority's metadata
            entry.apps[app] = msal_apps.build_app(self.config, app, entry.cache, self.http)
        return entry.apps[app]

    @staticmethod
    def _waiting(record: dict) -> bool:
        """A recorded failure that holds off the next attempt: needs sign-in, or a backoff."""
        return record.get("state") == NEEDS_SIGN_IN or float(record.get("backoff_until") or 0) > time.time()

    def _still_applies(self, kind: str, app: AppConfig, record: dict) -> bool:
        """A recorded failure is honoured only for the app settings it was met with: after the
        admin changed them (client_id, tenant, credential file, ... or rewrote that file), or for
        a record older than this fingerprint, the next use tries again. An app-only app's
        needs-sign-in is also tried once more by every start or reload of the relay: its fix is
        made in relay.yaml, the credential file or the app registration, never by a sign-in."""
        if record.get("fingerprint") != msal_apps.settings_fingerprint(self.config, app):
            return False
        return not (kind == "app" and record.get("state") == NEEDS_SIGN_IN
                    and float(record.get("last_error_at") or 0) < self.started)

    def _refresh(self, entry: _Entry, app: AppConfig, account: str, scopes: List[str],
                 reuse: Callable[[Optional[dict], dict], bool], why: str) -> str:
        command = fix_for(self.config, entry.kind, account, app.name)  # app-only: never a login
        if entry.kind == "account" and self.store.generation(entry.name) is None:
            raise TokenNeedsSignIn("no sign-in yet", None, command)
        with self.store.lock(entry.name, self.lock_timeout):
            record = self.store.read_record(entry.name)
            with entry.lock:
                self._sync(entry)
                at = self._find_token(entry, app, scopes)
                if at and reuse(at, record):  # another process refreshed while we waited
                    entry.last_given = at["secret"]
                    return at["secret"]
            if entry.kind == "account" and entry.generation is None:
                raise TokenNeedsSignIn("no sign-in yet", None, command)
            if self._waiting(record) and self._still_applies(entry.kind, app, record):
                if record.get("state") == NEEDS_SIGN_IN:
                    raise TokenNeedsSignIn(record.get("last_error") or "sign-in needed", record.get("aadsts"),
                                           command)
                waiting = f"waiting before retrying: {record.get('last_error')}"
                if record.get("setup_problem"):
                    raise TokenSetupError(waiting, record.get("aadsts"), app_fix(app.name))
                raise TokenUnavailable(waiting, record.get("aadsts"))
            rts_before = self._refresh_tokens(entry)
            started = time.monotonic()
            self.http.retry_after = None
            try:
                result = self._call_msal(entry, app, scopes)
            except TokenStoreError as exc:  # the app's secret or certificate file: not a sign-in matter
                error: TokenError = TokenSetupError(f"setup problem: {exc}", None, app_fix(app.name))
                result = None
            except Exception as exc:  # network, timeouts, 5xx (MsalServiceError), bad JSON
                error, result = from_exception(exc), None
            else:
                if result is None:  # signed in through another app only: not a failure to record
                    raise TokenNeedsSignIn(f"no sign-in through app {app.name} yet", None, command)
                error = from_result(result, command) if "error" in result else None
            if error is not None:
                if isinstance(error, TokenNeedsSignIn):
                    with entry.lock:  # built afresh next time: a rewritten secret file is read again
                        entry.apps.pop(app, None)
                self._reload(entry)
                self._mark_failed(entry, app, record, error)
                raise error
            with entry.lock:
                if entry.cache.has_state_changed:
                    entry.generation = self.store.save(entry.name, entry.cache.serialize())
                entry.last_given = result["access_token"]
            before = record.get("state")
            now = time.time()
            record.update(self._identity(entry, app, record.get("flow") or app.flow), last_refresh=now,
                          access_token_expires=now + float(result.get("expires_in") or 0))
            record.setdefault("first_obtained", now)
            if self._refresh_tokens(entry) != rts_before:
                record["refresh_token_rotated"] = now
            self._mark_ok(entry, record, before)
        self._log.info("token refreshed", account=entry.label, app=app.name, why=why,
                       ms=round((time.monotonic() - started) * 1000))
        return result["access_token"]

    def _call_msal(self, entry: _Entry, app: AppConfig, scopes: List[str]) -> Optional[dict]:
        application = self._msal_app(entry, app)
        if entry.kind == "app":
            for at in search(entry.cache, AT, query={"client_id": app.client_id}):
                entry.cache.remove_at(at)  # acquire_token_for_client would serve it from cache
            return application.acquire_token_for_client(scopes=scopes)
        hid = self._home_account_id(entry, app.client_id)
        accounts = [a for a in application.get_accounts() if a.get("home_account_id") == hid]
        if not accounts:
            return None
        return application.acquire_token_silent_with_error(scopes, accounts[0], force_refresh=True)

    def _refresh_tokens(self, entry: _Entry) -> Tuple[str, ...]:
        # Compared in memory only, to tell when Entra ID rotated the refresh token.
        with entry.lock:
            return tuple(sorted(rt.get("secret", "") for rt in search(entry.cache, RT)))

    def _identity(self, entry: _Entry, app: AppConfig, flow: str) -> dict:
        return {"kind": entry.kind, "account": entry.label if entry.kind == "account" else None,
                "app": app.name, "flow": flow}

    def _mark_ok(self, entry: _Entry, record: dict, before: Optional[str]) -> None:
        record.update(state="ok", last_error=None, aadsts=None, failures=0, backoff_until=0)
        record.pop("setup_problem", None)
        record.pop("fingerprint", None)
        self.store.write_record(entry.name, record)
        if before == NEEDS_SIGN_IN:
            self.notify(entry.label, "ok", "signed in again")

    def _mark_failed(self, entry: _Entry, app: AppConfig, record: dict, error: TokenError) -> None:
        before, now = record.get("state"), time.time()
        setup = isinstance(error, TokenSetupError)
        needs_sign_in = isinstance(error, TokenNeedsSignIn) and not setup
        record.update(self._identity(entry, app, record.get("flow") or app.flow),
                      last_error=error.reason, aadsts=error.aadsts, last_error_at=now, setup_problem=setup,
                      fingerprint=msal_apps.settings_fingerprint(self.config, app))
        if needs_sign_in:
            record.update(state=NEEDS_SIGN_IN, failures=0, backoff_until=0)
            self._log.error("app needs attention" if entry.kind == "app" else "account needs sign-in",
                            account=entry.label, app=app.name, reason=error.reason, aadsts=error.aadsts,
                            command=error.command)
        else:
            failures = int(record.get("failures") or 0) + 1
            delay = min(self.BACKOFF_MAX, self.BACKOFF_FIRST * 2 ** (failures - 1))
            # The sign-in service's own Retry-After wins when it asks for longer.
            delay = max(delay, self.http.retry_after or 0.0)
            record.update(state="error", failures=failures, backoff_until=now + delay)
            if setup:
                self._log.error("token setup problem", account=entry.label, app=app.name,
                                reason=error.reason, fix=error.command, retry_in=delay)
            else:
                self._log.warning("token refresh failed", account=entry.label, app=app.name,
                                  reason=error.reason, aadsts=error.aadsts, retry_in=delay)
        self.store.write_record(entry.name, record)
        if needs_sign_in and before != NEEDS_SIGN_IN:
            self.notify(entry.label, "needs-sign-in", error.reason)


def _merge(base_text: str, new_text: str) -> str:
    """A fresh sign-in's entries replace this app's old ones; other apps' entries stay."""
    base, new = json.loads(base_text or "{}"), json.loads(new_text or "{}")
    ids = {e.get("home_account_id") for entries in new.values() for e in entries.values()}
    clients = {e.get("client_id") for kind in (AT, RT) for e in new.get(kind, {}).values()}
    for kind, entries in base.items():
        for key in [k for k, e in entries.items()
                    if e.get("client_id") in clients and e.get("home_account_id") not in ids]:
            del entries[key]
    for kind, entries in new.items():
        base.setdefault(kind, {}).update(entries)
    return json.dumps(base, indent=1)
