"""A fake Office 365 server for what the bed's Dovecot and Postfix cannot play, and a second
relay in front of it.

FakeUpstream listens on loopback with a certificate of the bed's CA and serves each
connection in a thread of its own; a subclass speaks the protocol in _serve (or, behind
implicit TLS, in ImplicitTlsFake._dialogue) and counts logins per user with _count_login.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import threading
from typing import Dict, List

from tests.e2e.harness import LISTENERS


class FakeUpstream:
    def __init__(self, bed, directory: str):
        self.attempts: Dict[str, int] = {}   # XOAUTH2 logins per user (set before serving starts)
        cert, key = bed.issue_cert(directory)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.threads: List[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def close(self) -> None:
        self.closing.set()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _count_login(self, xoauth2: bytes) -> str:
        """The user a base64 XOAUTH2 response names, with this attempt counted."""
        user = re.search(rb"user=([^\x01]*)", base64.b64decode(xoauth2)).group(1).decode()
        self.attempts[user] = self.attempts.get(user, 0) + 1
        return user


class ImplicitTlsFake(FakeUpstream):
    """TLS from the first byte (IMAPS, POP3S); the subclass speaks the protocol in _dialogue."""

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self._dialogue(conn, conn.makefile("rb"))
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def _dialogue(self, conn, lines) -> None:
        raise NotImplementedError


def serve_only(relay, protocol: str, replacements: Dict[str, str]) -> None:
    """Rewrite a relay's config before it starts: each key, which must be there, replaced by
    its value (say the protocol's upstream by the fake), and only `protocol`'s listeners kept."""
    text = relay.config.read_text()
    assert all(old in text for old in replacements)
    for old, new in replacements.items():
        text = text.replace(old, new)
    others = "|".join(sorted({name for name, _ in LISTENERS} - {protocol}))
    text = "".join(line for line in text.splitlines(keepends=True)
                   if not re.match(r"  - \{protocol: (%s)," % others, line))
    relay.config.write_text(text)
    relay.ports = {name: port for name, port in relay.ports.items() if name.startswith(protocol + "-")}
