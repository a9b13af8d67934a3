"""HTTPS front of the stand-in identity provider (run as its own process).

    python idp_server.py --cert C --key K --grants-dir G --ready-file F

It binds 127.0.0.1 on free ports, then writes {"port", "sender_map_port"} to F.
The process must stay separate from pytest: the relay's gevent workers hammer
it, and pytest's own process must never be monkey-patched.

Besides the Microsoft-like endpoints it serves:
- POST /_control/<op> (JSON in, JSON out): the test-only control API;
- a Postfix socketmap (sender_map_port): which logins may use an address as
  MAIL FROM (smtpd_sender_login_maps, i.e. Send As).
"""
from __future__ import annotations

import argparse
import json
import os
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idp_flows import IdpState, OAuthError  # noqa: E402  (run as a script)

MAX_BODY = 1 << 20


class TLSHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # bursts of logins must not overflow the backlog

    def __init__(self, address, handler, context: ssl.SSLContext, state_factory) -> None:
        super().__init__(address, handler)
        self.context = context
        self.state: IdpState = state_factory(self.server_address[1])

    def finish_request(self, request, client_address) -> None:
        # Handshake in the connection's own thread, not in the accept loop.
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: msal and Dovecot reuse connections
    server_version = "bed-idp/1"
    timeout = 60

    def log_message(self, fmt, *args) -> None:
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    # ---------------------------------------------------------------- plumbing
    def _reply(self, status: int, body, headers=None, content_type="application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise OAuthError("invalid_request", 90002, "Request body too large.")
        return self.rfile.read(length) if length else b""

    def _form(self) -> dict:
        return dict(parse_qsl(self._body().decode("utf-8"), keep_blank_values=True))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        state = self.server.state
        try:
            if parts[0] == "_control" and method == "POST" and len(parts) == 2:
                return self._control(parts[1])
            if len(parts) >= 2 and parts[0] == "common" and parts[1] == "userrealm":
                # msal's ROPC asks this first; "Managed" means no federation.
                return self._reply(200, {"ver": "1.0", "account_type": "Managed",
                                         "domain_name": parts[-1].rpartition("@")[2],
                                         "cloud_instance_name": "microsoftonline.com",
                                         "cloud_audience_urn": "urn:federation:MicrosoftOnline"})
            tenant, rest = parts[0], "/".join(parts[1:])
            if method == "GET" and rest == "v2.0/.well-known/openid-configuration":
                state.count("discovery")
                return self._reply(200, self._openid_configuration(tenant))
            if method == "GET" and rest == "discovery/v2.0/keys":
                return self._reply(200, {"keys": []})
            if method == "POST" and rest == "oauth2/v2.0/token":
                return self._reply(200, state.token(tenant, self._form(),
                                                    self.headers.get("Authorization")))
            if method == "POST" and rest == "oauth2/v2.0/devicecode":
                return self._reply(200, state.start_device_flow(tenant, self._form()))
            if method == "GET" and rest == "oauth2/v2.0/authorize":
                return self._authorize(tenant, dict(parse_qsl(url.query)))
            if method == "POST" and rest == "oauth2/v2.0/introspect":
                form = self._form()
                return self._reply(200, state.introspect(
                    form.get("token", ""), self.headers.get("X-Dovecot-Auth-Service")))
            self._reply(404, {"error": "not_found", "error_description": self.path})
        except OAuthError as exc:
            self._reply(exc.status, exc.body(), exc.headers)
        except Exception as exc:  # a bed bug: say so instead of dropping the line
            import traceback
            traceback.print_exc()
            self._reply(500, {"error": "server_error", "error_description": repr(exc)})

    def _openid_configuration(self, tenant: str) -> dict:
        base = "%s/%s" % (self.server.state.base_url, tenant)
        return {
            "issuer": "%s/v2.0" % base,
            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            "token_endpoint": base + "/oauth2/v2.0/token",
            "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
            "introspection_endpoint": base + "/oauth2/v2.0/introspect",
            "jwks_uri": base + "/discovery/v2.0/keys",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                      "private_key_jwt",
                                                      "client_secret_basic"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["HS256"],
        }

    def _authorize(self, tenant: str, query: dict) -> None:
        params = self.server.state.authorize(tenant, query)
        target = query.get("redirect_uri", "")
        if query.get("response_mode") == "form_post":
            fields = "".join('<input type="hidden" name="%s" value="%s"/>'
                             % (k, _html(v)) for k, v in params.items())
            page = ('<html><body onload="document.forms[0].submit()"><form method="POST" '
                    'action="%s">%s</form></body></html>' % (_html(target), fields))
            return self._reply(200, page.encode("utf-8"), content_type="text/html")
        sep = "&" if "?" in target else "?"
        self._reply(302, b"", {"Location": target + sep + urlencode(params)},
                    content_type="text/plain")

    def _control(self, op: str) -> None:
        state = self.server.state
        raw = self._body()
        args = json.loads(raw.decode("utf-8")) if raw else {}
        ops = {
            "register_app": state.register_app,
            "set_password": lambda account, password: state.passwords.__setitem__(
                account.lower(), password),
            "approve_device_code": lambda account, user_code=None: state.set_device_state(
                user_code, "approved", account),
            "deny_device_code": lambda user_code=None: state.set_device_state(
                user_code, "denied"),
            "expire_device_code": lambda user_code=None: state.set_device_state(
                user_code, "expired"),
            "device_codes": state.device_codes,
            "set_device_flow": lambda interval=5, expires_in=900: setattr_many(
                state, device_interval=int(interval), device_expires_in=int(expires_in)),
            "set_authorize_account": lambda account=None, error=None, description=None:
                setattr_many(state, authorize_account=account, authorize_error=(
                    {"error": error, "error_description": description or error}
                    if error else None)),
            "expire_access_tokens": state.expire_access_tokens,
            "revoke": state.revoke,
            "fail_token_endpoint": state.fail,
            "clear_faults": lambda: setattr_many(state, faults=[]),
            "set_latency": lambda seconds, endpoint="token": state.latency.__setitem__(
                endpoint, float(seconds)),
            "counts": lambda: dict(state.counts),
            "token_requests": lambda: list(state.token_requests),
            "set_refresh_tokens": lambda enabled=True: setattr_many(
                state, issue_refresh_tokens=bool(enabled)),
            "reset_counts": state.counts.clear,
            "set_token_lifetime": lambda seconds: setattr_many(state, lifetime=int(seconds)),
            "set_token_size": lambda chars: setattr_many(state, token_size=int(chars)),
            "grant_mailbox_access": state.grant_mailbox_access,
            "revoke_mailbox_access": state.revoke_mailbox_access,
            "introspect": lambda token, service=None: state.introspect(token, service),
            "reset_test_state": state.reset_test_state,
            "reset": state.reset,
        }
        if op not in ops:
            return self._reply(404, {"error": "unknown control op %r" % op})
        try:
            result = ops[op](**args)
        except (TypeError, ValueError, KeyError) as exc:
            return self._reply(400, {"error": "%s: %s" % (type(exc).__name__, exc)})
        self._reply(200, {"result": result})


def setattr_many(obj, **values) -> None:
    for key, value in values.items():
        setattr(obj, key, value)


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;")
            .replace("<", "&lt;").replace(">", "&gt;"))


class SocketMapHandler(socketserver.StreamRequestHandler):
    """Postfix socketmap table "senders", answered from the IdP's grants.

    "senders <address>" -> the logins that may use it as MAIL FROM (Send As).
    Request and reply are netstrings: "<len>:<name> <key>," / "<len>:OK <value>,".
    """

    timeout = 60

    def handle(self) -> None:
        for _ in range(1000000):
            request = self._netstring()
            if request is None:
                return
            name, _, key = request.decode("utf-8", "replace").partition(" ")
            key = key.strip().lower()
            if "@" not in key or key.startswith("@") or "/" in key:
                reply = "NOTFOUND "
            elif name == "senders":
                reply = "OK " + ",".join(self.server.state.sender_owners(key))
            else:
                reply = "PERM unknown map %s" % name
            data = reply.encode("utf-8")
            self.wfile.write(b"%d:%s," % (len(data), data))
            self.wfile.flush()

    def _netstring(self):
        digits = b""
        for _ in range(12):
            char = self.rfile.read(1)
            if not char:
                return None
            if char == b":":
                break
            digits += char
        else:
            return None
        if not digits.isdigit() or int(digits) > 100000:
            return None
        payload = self.rfile.read(int(digits) + 1)  # and the trailing comma
        return payload[:-1] if payload.endswith(b",") else None


class SocketMapServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _watch_parent(parent: int) -> None:
    import time
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--grants-dir", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    def make_state(port: int) -> IdpState:
        return IdpState("https://%s:%d" % (args.host, port), args.grants_dir)

    server = TLSHTTPServer((args.host, 0), Handler, context, make_state)
    sender_map = SocketMapServer((args.host, 0), SocketMapHandler)
    sender_map.state = server.state
    threading.Thread(target=sender_map.serve_forever, daemon=True).start()

    # Exit with the process that started us, even if it dies without stop().
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    tmp = args.ready_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"port": server.server_address[1],
                   "sender_map_port": sender_map.server_address[1], "pid": os.getpid()},
                  handle)
    os.replace(tmp, args.ready_file)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
