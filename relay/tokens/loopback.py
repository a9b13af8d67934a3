"""The loopback redirect for the auth code flow: wait for the browser to come back once.

Entra ID accepts http://localhost on any port for "Mobile and desktop" redirect URIs, so we
listen on 127.0.0.1 (the configured port, or a free one). The browser brings code and state
in a form POST (response_mode=form_post keeps the code out of the address bar and history);
a GET with a query string is taken too. Nothing is logged from here: requests hold the code.
"""

from __future__ import annotations

import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Dict, Optional
from urllib.parse import parse_qs, urlsplit

MAX_FORM = 64 * 1024
DONE_PAGE = (b"<!doctype html><title>OAuth Relay</title><p>Sign-in received. You can close this "
             b"window and return to the terminal.</p>")


def parse_redirect(url: str) -> Dict[str, str]:
    """The parameters of a final redirect URL (query, or fragment for form_post-less errors)."""
    parts = urlsplit(url.strip())
    params = parse_qs(parts.query) or parse_qs(parts.fragment)
    return {key: values[0] for key, values in params.items() if values}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    server_version = "oauth-relay"
    timeout = 10  # a browser that connects and says nothing must not stall the wait

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._answer(parse_redirect(self.path))

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_FORM)).decode("utf-8", "replace")
        self._answer({key: values[0] for key, values in parse_qs(body).items() if values})

    def _answer(self, params: Dict[str, str]) -> None:
        if "code" not in params and "error" not in params:
            self.send_error(404)
            return
        self.server.result = params
        body = DONE_PAGE if "code" in params else (
            b"<!doctype html><title>OAuth Relay</title><p>Sign-in failed; see the terminal.</p>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # the request line carries the auth code
        pass


class _Server(HTTPServer):
    allow_reuse_address = True
    result: Optional[Dict[str, str]] = None


class RedirectReceiver:
    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self._server = _Server((host, port), _Handler)
        self._server.timeout = 0.5
        self.port = self._server.server_address[1]

    @property
    def redirect_uri(self) -> str:
        return f"http://localhost:{self.port}"

    def wait(self, timeout: float) -> Optional[Dict[str, str]]:
        """Serve requests until the redirect arrives or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while self._server.result is None and time.monotonic() < deadline:
            self._server.handle_request()
        return self._server.result

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
