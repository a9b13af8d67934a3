"""The stand-in identity provider: its process and the test-side control client.

The server (idp_server.py + idp_flows.py) runs in a child process. Tests talk
to it only over HTTPS: msal through the Microsoft-like endpoints, and the test
code through ``IdpControl``, which wraps the test-only ``/_control`` API.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import requests

from .procs import BedError, start_process, stop_process, tail

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "idp_server.py")
DEFAULT_TENANT = "common-test"


class IdpProcess:
    """Starts and stops the IdP server process."""

    def __init__(self, root: str, cert: str, key: str, grants_dir: str) -> None:
        self.root = os.path.join(root, "idp")
        os.makedirs(self.root, exist_ok=True)
        self.cert, self.key, self.grants_dir = cert, key, grants_dir
        self.log_file = os.path.join(self.root, "idp.log")
        self._ready = os.path.join(self.root, "ready.json")
        self._proc: Optional[subprocess.Popen] = None
        self.port = self.sender_map_port = 0

    def start(self, timeout: float = 15.0) -> None:
        if os.path.exists(self._ready):
            os.remove(self._ready)
        argv = [sys.executable, "-X", "utf8", SERVER_SCRIPT, "--cert", self.cert,
                "--key", self.key, "--grants-dir", self.grants_dir,
                "--ready-file", self._ready]
        # A clean environment: no gevent patching, no proxies, no CA overrides.
        env = {k: v for k, v in os.environ.items()
               if not k.upper().endswith("_PROXY") and k not in ("PYTHONPATH",)}
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = start_process(argv, self.log_file, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BedError("IdP exited with %s:\n%s" % (self._proc.returncode,
                                                            tail(self.log_file)))
            if os.path.exists(self._ready):
                with open(self._ready, encoding="utf-8") as handle:
                    info = json.load(handle)
                self.port, self.sender_map_port = info["port"], info["sender_map_port"]
                return
            time.sleep(0.02)
        self.stop()
        raise BedError("IdP did not start in %.0f s:\n%s" % (timeout, tail(self.log_file)))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout=5)


class IdpControl:
    """Test-side client of the IdP (control API plus URLs for msal and Dovecot)."""

    def __init__(self, host: str, port: int, ca_file: str, sender_map_port: int = 0) -> None:
        self.host, self.port, self.ca_file = host, port, ca_file
        self.sender_map_port = sender_map_port
        self.base_url = "https://%s:%d" % (host, port)
        self._session = requests.Session()
        self._session.trust_env = False  # REQUESTS_CA_BUNDLE / proxies must not apply
        self._session.verify = ca_file

    def close(self) -> None:
        self._session.close()

    # ---------------------------------------------------------------- URLs
    def authority(self, tenant: str = DEFAULT_TENANT) -> str:
        """What to pass to msal as ``authority`` (with instance_discovery=False)."""
        return "%s/%s" % (self.base_url, tenant)

    def token_endpoint(self, tenant: str = DEFAULT_TENANT) -> str:
        return "%s/%s/oauth2/v2.0/token" % (self.base_url, tenant)

    def authorize_endpoint(self, tenant: str = DEFAULT_TENANT) -> str:
        return "%s/%s/oauth2/v2.0/authorize" % (self.base_url, tenant)

    @property
    def introspection_url(self) -> str:
        return "%s/common/oauth2/v2.0/introspect" % self.base_url

    # ---------------------------------------------------------------- plumbing
    def _call(self, op: str, **args):
        response = self._session.post("%s/_control/%s" % (self.base_url, op),
                                      json=args, timeout=30)
        if response.status_code != 200:
            raise BedError("IdP control %s failed: %s %s" % (op, response.status_code,
                                                            response.text))
        return response.json()["result"]

    # ---------------------------------------------------------------- apps
    def register_app(self, client_id: Optional[str] = None, type: str = "public",
                     secret: Optional[str] = None, certificate: Optional[str] = None,
                     tenant: Optional[str] = None,
                     redirect_uris: Optional[List[str]] = None) -> str:
        """Register an app (certificate: PEM of the public cert); returns its client_id.

        A public app that sends a secret gets AADSTS700025; a confidential one
        that sends none gets AADSTS7000218; an unknown client_id AADSTS700016.
        With ``tenant`` set, other tenant paths (except common/organizations)
        do not know the app. Without ``redirect_uris`` any redirect is accepted.
        """
        return self._call("register_app", client_id=client_id, type=type, secret=secret,
                          certificate=certificate, tenant=tenant,
                          redirect_uris=redirect_uris)["client_id"]

    def set_password(self, account: str, password: str) -> None:
        """Make ROPC check this password (otherwise any non-empty password works)."""
        self._call("set_password", account=account, password=password)

    # ---------------------------------------------------------------- device code
    def device_codes(self) -> List[Dict]:
        return self._call("device_codes")

    def wait_for_device_code(self, timeout: float = 10.0) -> Dict:
        """The newest pending device code, waiting for a client to request one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [d for d in self.device_codes() if d["status"] == "pending"]
            if pending:
                return pending[-1]
            time.sleep(0.05)
        raise BedError("no device code was requested within %.0f s" % timeout)

    def approve_device_code(self, user_code: Optional[str], account: str) -> None:
        """Sign ``account`` in for that code (None: the newest pending one)."""
        self._call("approve_device_code", user_code=user_code, account=account)

    def deny_device_code(self, user_code: Optional[str] = None) -> None:
        self._call("deny_device_code", user_code=user_code)

    def expire_device_code(self, user_code: Optional[str] = None) -> None:
        self._call("expire_device_code", user_code=user_code)

    def set_device_flow(self, interval: int = 5, expires_in: int = 900) -> None:
        """Polling interval and lifetime of new device codes (Microsoft: 5 s, 900 s)."""
        self._call("set_device_flow", interval=interval, expires_in=expires_in)

    # ---------------------------------------------------------------- authorize
    def set_authorize_account(self, account: Optional[str], error: Optional[str] = None,
                              description: Optional[str] = None) -> None:
        """Who /authorize signs in without login_hint; or an error to redirect with."""
        self._call("set_authorize_account", account=account, error=error,
                   description=description)

    # ---------------------------------------------------------------- tokens
    def expire_access_tokens(self, account: str) -> int:
        """All current access tokens of the account (or app client_id) go inactive."""
        return self._call("expire_access_tokens", principal=account)["expired"]

    def revoke(self, account: str, code: int = 50173, access: bool = True,
               refresh: bool = True) -> int:
        """Current tokens refused: refresh gets invalid_grant AADSTS<code>.

        New sign-ins still work, as after a password reset at Microsoft. Use
        code=700082 (inactivity) or 70043 (sign-in frequency) for other stories.
        """
        return self._call("revoke", account=account, code=code, access=access,
                          refresh=refresh)["revoked"]

    def set_token_lifetime(self, seconds: int) -> None:
        """expires_in of access tokens issued from now on (default 3600)."""
        self._call("set_token_lifetime", seconds=seconds)

    def set_token_size(self, chars: int) -> None:
        """Length of new access tokens (default 1400, like real ones: long SASL lines)."""
        self._call("set_token_size", chars=chars)

    def introspect(self, token: str, service: Optional[str] = None) -> Dict:
        """What Dovecot would be told about a token (service: imap, pop3, smtp)."""
        return self._call("introspect", token=token, service=service)

    # ---------------------------------------------------------------- faults
    def fail_token_endpoint(self, status: int = 500, error: Optional[str] = None,
                            code: Optional[int] = None, description: Optional[str] = None,
                            count: Optional[int] = None, retry_after: Optional[int] = 0,
                            grant_type: Optional[str] = None,
                            endpoint: str = "token") -> None:
        """Fail the next ``count`` requests (None: until clear_faults()).

        error=None: HTTP ``status`` (5xx) with error server_error. With error
        (e.g. "invalid_grant", code=70043): HTTP 400 in Microsoft's format.
        retry_after=0 sends "Retry-After: 0" so msal neither throttles nor
        caches the failure; None sends no header (msal then caches a 400 for
        60 s). grant_type limits the fault to one grant; endpoint may be
        "token" or "devicecode".
        """
        self._call("fail_token_endpoint", status=status, error=error, code=code,
                   description=description, count=count, retry_after=retry_after,
                   grant_type=grant_type, endpoint=endpoint)

    def clear_faults(self) -> None:
        self._call("clear_faults")

    def set_latency(self, seconds: float, endpoint: str = "token") -> None:
        """Delay every request to an endpoint ("token" or "introspect")."""
        self._call("set_latency", seconds=seconds, endpoint=endpoint)

    def counts(self) -> Dict[str, int]:
        """Requests since the test began: per endpoint ("token", "devicecode",
        "authorize", "introspect", "discovery"), per grant ("token:refresh_token",
        "token:urn:ietf:params:oauth:grant-type:device_code", ...) and refreshes
        per account ("token:refresh_token:<account>")."""
        return self._call("counts")

    def reset_counts(self) -> None:
        self._call("reset_counts")

    def token_requests(self, client_id: Optional[str] = None) -> List[Dict]:
        """Token requests since the test began, oldest first: tenant, grant_type, client_id,
        scope (as sent, space-separated) and at (epoch seconds). Only client_id's if given."""
        return [r for r in self._call("token_requests")
                if client_id is None or r["client_id"] == client_id]

    def set_refresh_tokens(self, enabled: bool = True) -> None:
        """enabled=False: delegated grants get no refresh token even with offline_access
        (an app registration without offline_access, or a tenant policy that forbids it)."""
        self._call("set_refresh_tokens", enabled=enabled)

    # ---------------------------------------------------------------- mailboxes
    def grant_mailbox_access(self, account: str, mailbox: str, send_as: bool = True) -> None:
        """Let ``account`` (or an app's client_id) open ``mailbox`` and send as it."""
        self._call("grant_mailbox_access", principal=account, mailbox=mailbox,
                   send_as=send_as)

    def revoke_mailbox_access(self, account: str, mailbox: str) -> None:
        self._call("revoke_mailbox_access", principal=account, mailbox=mailbox)

    # ---------------------------------------------------------------- reset
    def reset_test_state(self) -> None:
        """Forget faults, latency, counts, token requests, lifetime, device-flow, authorize
        and refresh-token knobs."""
        self._call("reset_test_state")

    def reset(self) -> None:
        """Forget everything, apps and tokens included (Bed.reset_idp() keeps its app)."""
        self._call("reset")
