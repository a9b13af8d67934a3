"""State and OAuth2 grant logic of the stand-in identity provider.

Imitates what Microsoft's identity platform (Entra ID, v2.0 endpoints) answers,
as far as msal and the relay can tell. Everything lives in memory behind one
lock; the HTTP layer (idp_server.py) only parses requests and writes replies.
Runs in the IdP's own process: stdlib, PyJWT and cryptography only.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from typing import Dict, List, Optional

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}
# The scope each mail protocol needs, as Exchange Online checks it.
SERVICE_SCOPE = {"imap": "IMAP.AccessAsUser.All", "pop3": "POP.AccessAsUser.All",
                 "smtp": "SMTP.Send"}
GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
ASSERTION_JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NAMESPACE = uuid.UUID("5b0f4a2e-8d0c-4c8e-9a51-0b1d2f3e4a5c")
DEFAULT_LIFETIME = 3600
DEFAULT_TOKEN_SIZE = 1400  # real Exchange tokens are 1.5-3 KB; SASL lines get long


class OAuthError(Exception):
    """An error reply in Microsoft's format (error, AADSTS code, ids, timestamp)."""

    def __init__(self, error: str, code: Optional[int], description: str,
                 status: int = 400, headers: Optional[dict] = None) -> None:
        super().__init__(description)
        self.error, self.code, self.description = error, code, description
        self.status, self.headers = status, dict(headers or {})

    def body(self) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        prefix = "AADSTS%d: " % self.code if self.code else ""
        body = {
            "error": self.error,
            "error_description": "%s%s Trace ID: %s Correlation ID: %s Timestamp: %s"
                                 % (prefix, self.description, trace, correlation, stamp),
            "error_codes": [self.code] if self.code else [],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
        }
        if self.code:
            body["error_uri"] = "https://login.microsoftonline.com/error?code=%d" % self.code
        return body


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def tenant_id(tenant: str) -> str:
    """A stable GUID per tenant path, as Microsoft's tid claim is a GUID."""
    return str(uuid.uuid5(NAMESPACE, "tenant:" + tenant.lower()))


def object_id(account: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "user:" + account.lower()))


class IdpState:
    def __init__(self, base_url: str, grants_dir: str) -> None:
        self.base_url = base_url
        self.grants_dir = grants_dir
        self.lock = threading.RLock()
        self._id_token_key = secrets.token_bytes(32)
        self.reset()

    # ----------------------------------------------------------- admin
    def reset(self) -> None:
        with self.lock:
            self.apps: Dict[str, dict] = {}
            self.passwords: Dict[str, str] = {}
            self.access: Dict[str, dict] = {}
            self.refresh: Dict[str, dict] = {}
            self.codes: Dict[str, dict] = {}
            self.devices: Dict[str, dict] = {}
            self.grants: Dict[tuple, dict] = {}
            self.reset_test_state()
            for name in os.listdir(self.grants_dir):
                self._remove_grant_dir(name)

    def reset_test_state(self) -> None:
        """Forget faults and knobs a test may have set; keep apps and tokens."""
        with self.lock:
            self.faults: List[dict] = []
            self.latency: Dict[str, float] = {}
            self.counts: Counter = Counter()
            self.lifetime = DEFAULT_LIFETIME
            self.token_size = DEFAULT_TOKEN_SIZE
            self.device_interval, self.device_expires_in = 5, 900
            self.authorize_account: Optional[str] = None
            self.authorize_error: Optional[dict] = None
            self.token_requests: List[dict] = []   # what clients asked the token endpoint for
            self.issue_refresh_tokens = True       # False: offline_access gets no refresh token

    def register_app(self, client_id=None, type="public", secret=None,
                     certificate=None, tenant=None, redirect_uris=None) -> dict:
        if type not in ("public", "confidential"):
            raise ValueError("type must be public or confidential")
        if type == "confidential" and not (secret or certificate):
            raise ValueError("a confidential app needs a secret or a certificate")
        certs = []
        for pem in ([certificate] if isinstance(certificate, str) else certificate or []):
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            certs.append({
                "key": cert.public_key(),
                "x5t": b64url(cert.fingerprint(hashes.SHA1())),
                "x5t#S256": b64url(cert.fingerprint(hashes.SHA256())),
            })
        client_id = client_id or str(uuid.uuid4())
        with self.lock:
            self.apps[client_id] = {
                "client_id": client_id, "type": type, "secret": secret, "certs": certs,
                "tenant": tenant, "redirect_uris": list(redirect_uris or []),
            }
        return {"client_id": client_id}

    def grant_mailbox_access(self, principal: str, mailbox: str, send_as: bool = True) -> dict:
        """Let an account (delegate) or a client_id (app-only) open ``mailbox``.

        Dovecot learns about the grant from a file grants/<principal>/<mailbox>
        (see dovecot.py); Postfix asks the sender-login map for Send As.
        """
        principal, mailbox = principal.lower(), mailbox.lower()
        with self.lock:
            self.grants[(principal, mailbox)] = {"send_as": bool(send_as)}
            directory = os.path.join(self.grants_dir, _safe_name(principal))
            os.makedirs(directory, mode=0o755, exist_ok=True)
            path = os.path.join(directory, _safe_name(mailbox))
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                # passwd-file line: user:password:uid:gid:gecos:home:shell:extra
                handle.write("%s:::::::nopassword\n" % mailbox)
            os.chmod(path + ".tmp", 0o644)
            os.replace(path + ".tmp", path)
        return {}

    def revoke_mailbox_access(self, principal: str, mailbox: str) -> dict:
        principal, mailbox = principal.lower(), mailbox.lower()
        with self.lock:
            self.grants.pop((principal, mailbox), None)
            path = os.path.join(self.grants_dir, _safe_name(principal), _safe_name(mailbox))
            if os.path.exists(path):
                os.remove(path)
        return {}

    def _remove_grant_dir(self, name: str) -> None:
        directory = os.path.join(self.grants_dir, name)
        for entry in os.listdir(directory):
            os.remove(os.path.join(directory, entry))
        os.rmdir(directory)

    def sender_owners(self, address: str) -> List[str]:
        """Logins allowed to use ``address`` as MAIL FROM (Send As)."""
        address = address.lower()
        with self.lock:
            owners = [address] + sorted(p for (p, m), g in self.grants.items()
                                        if m == address and g["send_as"])
        return owners

    def expire_access_tokens(self, principal: str) -> dict:
        principal = principal.lower()
        n = 0
        with self.lock:
            for record in self.access.values():
                if principal in (record["account"], record["client_id"].lower()):
                    record["exp"] = 0
                    n += 1
        return {"expired": n}

    def revoke(self, account: str, code: int = 50173, access: bool = True,
               refresh: bool = True) -> dict:
        """Refuse the account's current tokens; later sign-ins work again."""
        account = account.lower()
        n = 0
        with self.lock:
            tables = ([self.access] if access else []) + ([self.refresh] if refresh else [])
            for table in tables:
                for record in table.values():
                    if record["account"] == account:
                        record["revoked"] = int(code)
                        n += 1
        return {"revoked": n}

    def fail(self, status: int = 500, error: Optional[str] = None, code: Optional[int] = None,
             description: Optional[str] = None, count: Optional[int] = None,
             retry_after: Optional[int] = 0, grant_type: Optional[str] = None,
             endpoint: str = "token") -> dict:
        with self.lock:
            self.faults.append({
                "status": int(status), "error": error, "code": code,
                "description": description, "count": count, "retry_after": retry_after,
                "grant_type": grant_type, "endpoint": endpoint,
            })
        return {}

    def _take_fault(self, endpoint: str, grant_type: Optional[str]) -> None:
        with self.lock:
            for fault in self.faults:
                if fault["endpoint"] != endpoint:
                    continue
                if fault["grant_type"] and fault["grant_type"] != grant_type:
                    continue
                if fault["count"] is not None:
                    if fault["count"] <= 0:
                        continue
                    fault["count"] -= 1
                break
            else:
                return
        headers = {}
        if fault["retry_after"] is not None:
            # msal caches neither a 400 nor a 5xx when Retry-After says 0.
            headers["Retry-After"] = str(fault["retry_after"])
        if fault["error"]:
            raise OAuthError(fault["error"], fault["code"],
                             fault["description"] or "Injected failure.",
                             status=fault["status"] if fault["status"] < 500 else 400,
                             headers=headers)
        raise OAuthError("server_error", fault["code"] or 90033,
                         fault["description"] or "A transient error has occurred.",
                         status=fault["status"], headers=headers)

    def delay(self, endpoint: str) -> None:
        seconds = self.latency.get(endpoint, 0)
        if seconds > 0:
            time.sleep(min(float(seconds), 120.0))

    # ----------------------------------------------------------- devices
    def device_codes(self) -> List[dict]:
        with self.lock:
            return [{k: d[k] for k in ("user_code", "client_id", "status", "scope", "account")}
                    for d in self.devices.values()]

    def set_device_state(self, user_code: Optional[str], status: str,
                         account: Optional[str] = None) -> dict:
        with self.lock:
            candidates = [d for d in self.devices.values()
                          if (user_code is None and d["status"] == "pending")
                          or d["user_code"] == user_code]
            if not candidates:
                raise ValueError("no such (pending) device code: %r" % user_code)
            device = candidates[-1]
            device["status"] = status
            if account:
                device["account"] = account.lower()
            if status == "expired":
                device["expires_at"] = 0
        return {"user_code": device["user_code"]}

    def start_device_flow(self, tenant: str, form: dict) -> dict:
        self.count("devicecode")
        self._take_fault("devicecode", None)
        app = self._app(tenant, form.get("client_id"))
        user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
        device_code = "DAQABAAEAAAA" + secrets.token_urlsafe(96)
        uri = "%s/devicelogin" % self.base_url
        with self.lock:
            interval, expires_in = self.device_interval, self.device_expires_in
            self.devices[device_code] = {
                "user_code": user_code, "client_id": app["client_id"], "tenant": tenant,
                "scope": form.get("scope", ""), "status": "pending", "account": None,
                "expires_at": time.time() + expires_in, "last_poll": 0.0, "interval": interval,
            }
        return {
            "user_code": user_code, "device_code": device_code, "verification_uri": uri,
            "expires_in": expires_in, "interval": interval,
            "message": "To sign in, use a web browser to open the page %s and enter the "
                       "code %s to authenticate." % (uri, user_code),
        }

    # ----------------------------------------------------------- authorize
    def authorize(self, tenant: str, query: dict) -> dict:
        """Auto-approve; return redirect parameters (or raise for a page error)."""
        self.count("authorize")
        app = self._app(tenant, query.get("client_id"))
        redirect_uri = query.get("redirect_uri", "")
        if app["redirect_uris"] and redirect_uri not in app["redirect_uris"]:
            raise OAuthError("invalid_request", 50011, "The redirect URI '%s' specified in "
                             "the request does not match the redirect URIs configured for "
                             "the application '%s'." % (redirect_uri, app["client_id"]))
        if query.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", 700054,
                             "response_type 'code' is the only one supported here.")
        params = {"state": query["state"]} if "state" in query else {}
        with self.lock:
            account = (query.get("login_hint") or self.authorize_account or "").lower()
            refusal = self.authorize_error
        if refusal:
            params.update(refusal)
            return params
        if not account:
            params.update(error="login_required", error_description="AADSTS50058: A silent "
                          "sign-in request was sent but no user is signed in.")
            return params
        code = "0.AAAA" + secrets.token_urlsafe(48)
        with self.lock:
            self.codes[code] = {
                "client_id": app["client_id"], "redirect_uri": redirect_uri, "tenant": tenant,
                "scope": query.get("scope", ""), "account": account, "nonce": query.get("nonce"),
                "challenge": query.get("code_challenge"),
                "method": query.get("code_challenge_method", "plain"),
                "expires_at": time.time() + 600,
            }
        params["code"] = code
        return params

    # ----------------------------------------------------------- token
    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def token(self, tenant: str, form: dict, auth_header: Optional[str]) -> dict:
        grant = form.get("grant_type", "")
        self.count("token")
        self.count("token:" + grant)
        self.record_token_request(tenant, form)
        self.delay("token")
        self._take_fault("token", grant)
        app = self._authenticate_client(tenant, form, auth_header)
        if grant == "client_credentials":
            return self._client_credentials(tenant, app, form)
        if grant == "password":
            return self._password(tenant, app, form)
        if grant == "refresh_token":
            return self._refresh(tenant, app, form)
        if grant == "authorization_code":
            return self._auth_code(tenant, app, form)
        if grant in (GRANT_DEVICE, "device_code"):
            return self._device(tenant, app, form)
        raise OAuthError("unsupported_grant_type", 70003,
                         "The app requested an unsupported grant type '%s'." % grant)

    def record_token_request(self, tenant: str, form: dict) -> None:
        """Keep grant, client and scope of each token request (no secrets), newest last."""
        with self.lock:
            self.token_requests.append({"tenant": tenant, "grant_type": form.get("grant_type", ""),
                                        "client_id": form.get("client_id"),
                                        "scope": form.get("scope"), "at": time.time()})
            del self.token_requests[:-1000]

    def _app(self, tenant: str, client_id: Optional[str]) -> dict:
        with self.lock:
            app = self.apps.get(client_id or "")
        if app is None:
            raise OAuthError("unauthorized_client", 700016, "Application with identifier "
                             "'%s' was not found in the directory '%s'." % (client_id, tenant))
        if app["tenant"] and tenant.lower() not in (app["tenant"].lower(), "common",
                                                    "organizations"):
            raise OAuthError("unauthorized_client", 700016, "Application with identifier "
                             "'%s' was not found in the directory '%s'." % (client_id, tenant))
        return app

    def _authenticate_client(self, tenant: str, form: dict, auth_header: Optional[str]) -> dict:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if auth_header and auth_header.lower().startswith("basic "):
            from urllib.parse import unquote_plus
            raw = base64.b64decode(auth_header[6:]).decode("utf-8")
            basic_id, _, basic_secret = raw.partition(":")
            client_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        app = self._app(tenant, client_id)
        assertion = form.get("client_assertion")
        if app["type"] == "public":
            if secret or assertion:
                raise OAuthError("invalid_client", 700025, "Client is public so neither "
                                 "'client_assertion' nor 'client_secret' should be presented.",
                                 status=401)
            return app
        if not (secret or assertion):
            raise OAuthError("invalid_client", 7000218, "The request body must contain the "
                             "following parameter: 'client_assertion' or 'client_secret'.",
                             status=401)
        if secret:
            if not app["secret"] or not secrets.compare_digest(secret, app["secret"]):
                raise OAuthError("invalid_client", 7000215,
                                 "Invalid client secret provided. Ensure the secret being "
                                 "sent in the request is the client secret value, not the "
                                 "client secret ID, for a secret added to app '%s'."
                                 % app["client_id"], status=401)
            return app
        if form.get("client_assertion_type") != ASSERTION_JWT:
            raise OAuthError("invalid_client", 700026, "Client assertion type is invalid.",
                             status=401)
        self._check_assertion(tenant, app, assertion)
        return app

    def _check_assertion(self, tenant: str, app: dict, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", 50027, "JWT token is invalid or malformed.",
                             status=401)
        # msal sends padded base64url thumbprints; Entra ID accepts both forms.
        x5t = str(header.get("x5t", "")).rstrip("=")
        x5t256 = str(header.get("x5t#S256", "")).rstrip("=")
        certs = [c for c in app["certs"] if x5t == c["x5t"] or x5t256 == c["x5t#S256"]]
        if not certs:
            raise OAuthError("invalid_client", 700027, "The certificate with identifier used "
                             "to sign the client assertion is not registered on "
                             "application.", status=401)
        audience = "%s/%s/oauth2/v2.0/token" % (self.base_url, tenant)
        try:
            claims = jwt.decode(assertion, certs[0]["key"], algorithms=["RS256", "PS256"],
                                audience=audience, leeway=60,
                                options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise OAuthError("invalid_client", 700024, "Client assertion is not within its "
                             "valid time range.", status=401)
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", 700027, "Client assertion failed signature "
                             "validation (%s)." % exc, status=401)
        if claims.get("iss") != app["client_id"] or claims.get("sub") != app["client_id"]:
            raise OAuthError("invalid_client", 700021, "Client assertion application "
                             "identifier doesn't match 'client_id' parameter.", status=401)

    def _client_credentials(self, tenant: str, app: dict, form: dict) -> dict:
        if app["type"] != "confidential":
            raise OAuthError("invalid_client", 7000218, "The request body must contain the "
                             "following parameter: 'client_assertion' or 'client_secret'.",
                             status=401)
        scopes = form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise OAuthError("invalid_scope", 1002012, "The provided value for scope %s is "
                             "not valid. Client credential flows must have a scope value "
                             "with /.default suffixed to the resource identifier."
                             % " ".join(scopes))
        token, lifetime = self._new_access(tenant, app, None, scopes)
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                "access_token": token}

    def _password(self, tenant: str, app: dict, form: dict) -> dict:
        account = form.get("username", "").lower()
        with self.lock:
            expected = self.passwords.get(account)
        if not account or not form.get("password") or (
                expected is not None and expected != form.get("password")):
            raise OAuthError("invalid_grant", 50126, "Error validating credentials due to "
                             "invalid username or password.")
        return self._user_tokens(tenant, app, account, form.get("scope", ""))

    def _refresh(self, tenant: str, app: dict, form: dict) -> dict:
        with self.lock:
            record = self.refresh.get(form.get("refresh_token", ""))
        if record is None or record["client_id"] != app["client_id"]:
            raise OAuthError("invalid_grant", 9002313,
                             "Invalid request. Request is malformed or invalid.")
        self.count("token:refresh_token:" + record["account"])  # refresh storms
        if record["revoked"]:
            raise OAuthError("invalid_grant", record["revoked"], _REVOKE_TEXT.get(
                record["revoked"], "The refresh token has been revoked."))
        if record["tenant"].lower() != tenant.lower() and tenant.lower() not in (
                "common", "organizations"):
            raise OAuthError("invalid_grant", 7000012,
                             "The grant was obtained for a different tenant.")
        # Rotation: a new refresh token every time; the old one stays valid.
        return self._user_tokens(tenant, app, record["account"],
                                 form.get("scope") or record["scope"])

    def _auth_code(self, tenant: str, app: dict, form: dict) -> dict:
        with self.lock:
            record = self.codes.pop(form.get("code", ""), None)
        if record is None:
            raise OAuthError("invalid_grant", 54005,
                             "OAuth2 Authorization code was already redeemed, please retry "
                             "with a new valid code or use an existing refresh token.")
        if record["expires_at"] < time.time():
            raise OAuthError("invalid_grant", 70008, "The provided authorization code or "
                             "refresh token has expired due to inactivity.")
        if record["client_id"] != app["client_id"]:
            raise OAuthError("invalid_grant", 70000, "Provided grant is invalid or "
                             "malformed: the code was issued to another client.")
        if form.get("redirect_uri", "") != record["redirect_uri"]:
            raise OAuthError("invalid_grant", 70000, "Provided grant is invalid or "
                             "malformed: redirect_uri differs from the authorize request.")
        if record["challenge"]:
            verifier = form.get("code_verifier", "")
            if record["method"] == "S256":
                computed = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
            else:
                computed = verifier
            if not verifier or computed != record["challenge"]:
                raise OAuthError("invalid_grant", 501481, "The Code_Verifier does not match "
                                 "the code_challenge supplied in the authorization request.")
        return self._user_tokens(tenant, app, record["account"],
                                 form.get("scope") or record["scope"], nonce=record["nonce"])

    def _device(self, tenant: str, app: dict, form: dict) -> dict:
        code = form.get("device_code") or form.get("code") or ""
        now = time.time()
        with self.lock:
            device = self.devices.get(code)
            if device is None or device["client_id"] != app["client_id"]:
                raise OAuthError("invalid_grant", 70000, "Provided grant is invalid or "
                                 "malformed.")
            too_fast = now - device["last_poll"] < device["interval"] * 0.5
            device["last_poll"] = now
            status = device["status"]
            if status == "pending" and device["expires_at"] < now:
                status = "expired"
            if status == "redeemed":
                raise OAuthError("invalid_grant", 54005, "The device code was already "
                                 "redeemed.")
            if status == "approved":
                device["status"] = "redeemed"
        if status == "expired":
            raise OAuthError("expired_token", 70020, "The provided value for the input "
                             "parameter 'device_code' is not valid. This device code has "
                             "expired.")
        if status == "denied":
            raise OAuthError("authorization_declined", 70000,
                             "The end user denied the authorization request.")
        if status == "pending":
            if too_fast:
                raise OAuthError("slow_down", 70016, "OAuth 2.0 device flow error. "
                                 "Polling too fast: wait the interval between requests.")
            raise OAuthError("authorization_pending", 70016, "OAuth 2.0 device flow error. "
                             "Authorization is pending. Continue polling.")
        return self._user_tokens(tenant, app, device["account"],
                                 form.get("scope") or device["scope"])

    # ----------------------------------------------------------- issuing
    def _new_access(self, tenant: str, app: dict, account: Optional[str],
                    scopes: List[str]) -> tuple:
        with self.lock:
            lifetime, size = self.lifetime, self.token_size
        token = "EwB" + secrets.token_urlsafe(size)[:max(size - 3, 32)]
        with self.lock:
            self.access[token] = {
                "account": account, "client_id": app["client_id"], "tenant": tenant,
                "scopes": scopes, "iat": time.time(), "exp": time.time() + lifetime,
                "revoked": None,
            }
        return token, lifetime

    def _user_tokens(self, tenant: str, app: dict, account: str, scope: str,
                     nonce: Optional[str] = None) -> dict:
        requested = scope.split()
        resource = [s for s in requested if s.lower() not in RESERVED_SCOPES]
        token, lifetime = self._new_access(tenant, app, account, resource)
        reply = {"token_type": "Bearer", "scope": " ".join(resource) or "openid profile",
                 "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
        tid, oid = tenant_id(tenant), object_id(account)
        with self.lock:
            issue_refresh = self.issue_refresh_tokens
        if "offline_access" in requested and issue_refresh:
            refresh = "0.AQ" + secrets.token_urlsafe(300)
            with self.lock:
                self.refresh[refresh] = {"account": account, "client_id": app["client_id"],
                                         "tenant": tenant, "scope": scope, "revoked": None}
            reply["refresh_token"] = refresh
        now = int(time.time())
        claims = {
            "aud": app["client_id"], "iss": "%s/%s/v2.0" % (self.base_url, tid),
            "iat": now, "nbf": now, "exp": now + 3600, "name": account.split("@")[0],
            "oid": oid, "preferred_username": account, "sub": b64url(hashlib.sha256(
                (app["client_id"] + oid).encode()).digest()), "tid": tid, "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        reply["id_token"] = jwt.encode(claims, self._id_token_key, algorithm="HS256")
        reply["client_info"] = b64url(json.dumps({"uid": oid, "utid": tid}).encode())
        return reply

    # ----------------------------------------------------------- introspection
    def introspect(self, token: str, service: Optional[str]) -> dict:
        """RFC 7662 answer for Dovecot; expired, revoked, unknown: inactive."""
        self.count("introspect")
        self.delay("introspect")
        with self.lock:
            record = self.access.get(token)
            if record is None or record["revoked"] or record["exp"] <= time.time():
                return {"active": False}
            if not _scope_allows(record, (service or "").lower()):
                return {"active": False}
            principal = record["account"] or record["client_id"].lower()
            return {
                "active": True, "username": principal, "client_id": record["client_id"],
                "scope": " ".join(record["scopes"]), "token_type": "Bearer",
                "exp": int(record["exp"]), "iat": int(record["iat"]), "sub": principal,
            }


_REVOKE_TEXT = {
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is "
           "needed. The user might have changed or reset their password.",
    50133: "Session is invalid due to expiration or recent password change.",
    700082: "The refresh token has expired due to inactivity. The token was issued on "
            "a date and was inactive for 90.00:00:00.",
    70043: "The refresh token has expired or is invalid due to sign-in frequency checks "
           "by conditional access.",
}


def _scope_allows(record: dict, service: str) -> bool:
    """Exchange refuses a token whose scopes lack the protocol's permission."""
    needed = SERVICE_SCOPE.get(service)
    if needed is None:
        return True
    for scope in record["scopes"]:
        if scope.endswith("/.default") or scope.rsplit("/", 1)[-1].lower() == needed.lower():
            return True
    return False


def _safe_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError("bad principal or mailbox name: %r" % name)
    return name
