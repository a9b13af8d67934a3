"""Runs one client connection: the protocol state machine until login, then the pipe."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import time
from typing import List, Optional

import gevent

from relay import activity, journal
from relay.config.models import Listener
from relay.protocols import MACHINES
from relay.protocols.base import (Close, Failure, Login, LoginResult, Pipe, Send, SessionContext, StartTLS,
                                  Trace)
from relay.pipe import run_pipe
from relay.services import ShuttingDown
from relay.tokens import TokenNeedsSignIn, TokenUnavailable
from relay.tokens.errors import TokenSetupError
from relay.upstream.connection import UpstreamConnection, tune_socket
from relay.upstream.errors import SmtpAuthDisabled, UpstreamError
from relay.upstream.login import open_upstream

_session_ids = itertools.count(1)


class Session:
    def __init__(self, sock: socket.socket, address, listener: Listener, services):
        self.sock = sock
        self.ip = address[0]
        self.listener = listener
        self.services = services
        self.config = services.config
        self.id = f"{os.getpid():x}-{next(_session_ids):x}"
        self.log = journal.get_logger(listener=listener.name, session=self.id, client=self.ip)
        self.upstream: Optional[UpstreamConnection] = None
        self.user = None
        self.mailbox_held: Optional[str] = None

    def _context(self) -> SessionContext:
        protocol = self.listener.protocol
        return SessionContext(
            protocol=protocol, tls_active=self.listener.security == "tls",
            starttls_offered=self.listener.security == "starttls",
            plaintext_auth_allowed=self.config.auth.plaintext_allowed(self.ip),
            hostname=self.config.hostname,
            max_failed_logins=self.config.auth.failures_per_session,
            upstream_capabilities=self.services.capabilities.get(protocol))

    def run(self) -> None:
        tune_socket(self.sock)
        self.log.debug("session_open")
        try:
            if self.listener.security == "tls" and not self._start_tls():
                return
            machine = MACHINES[self.listener.protocol](self._context())
            self._converse(machine)
        except Exception:
            self.log.exception("session_failed")
        finally:
            self._finish()

    def _finish(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self.mailbox_held:
            self.services.sessions.release(self.mailbox_held)
        try:
            self.sock.close()
        except OSError:
            pass

    def _start_tls(self) -> bool:
        try:
            self.sock.settimeout(self.config.limits.preauth_timeout)
            self.sock = self.services.server_tls.wrap_socket(self.sock, server_side=True)
            return True
        except (ssl.SSLError, OSError) as exc:
            self.log.info("client_tls_failed", error=str(exc))
            return False

    def _converse(self, machine) -> Optional[str]:
        deadline = time.monotonic() + self.config.limits.preauth_timeout
        actions = machine.greeting()
        while True:
            outcome = self._perform(machine, actions)
            if outcome is not None:
                return outcome
            remaining = deadline - time.monotonic()
            try:
                data = self._recv_before_login(remaining) if remaining > 0 else None
            except ShuttingDown:
                self._perform(machine, machine.shutting_down())
                return None
            if data is None:
                self.log.info("preauth_timeout")
                self._perform(machine, machine.timed_out())
                return None
            if not data:
                self._perform(machine, machine.connection_lost())
                return None
            actions = machine.receive(data)

    def _recv_before_login(self, timeout: float) -> Optional[bytes]:
        waiting = self.services.waiting_before_login
        me = gevent.getcurrent()
        waiting.add(me)
        try:
            return self._recv(timeout)
        finally:
            waiting.discard(me)

    def _recv(self, timeout: float) -> Optional[bytes]:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            return None
        except (OSError, ssl.SSLError):
            return b""

    def _perform(self, machine, actions: List) -> Optional[str]:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Send):
                if not self._send(action.data):
                    return "client gone"
            elif isinstance(action, Trace):
                if action.line:
                    journal.wire(self.log, "client>relay", action.line, redacted=True)
                if action.refusal:
                    self.log.warning("login_refused", reason=action.refusal)
            elif isinstance(action, StartTLS):
                if not self._start_tls():
                    return "client TLS failed"
                queue = machine.tls_started() + queue
            elif isinstance(action, Login):
                queue = machine.login_result(self._login(action.username, action.password)) + queue
            elif isinstance(action, Pipe):
                self._pipe(action.pending)
                return "piped"
            elif isinstance(action, Close):
                ordinary = action.reason in ("client logout", "client quit")
                (self.log.debug if ordinary else self.log.info)("session_close", reason=action.reason)
                return "closed"
        return None

    def _send(self, data: bytes) -> bool:
        if journal.wire_enabled():
            for line in data.decode("utf-8", "replace").splitlines():
                journal.wire(self.log, "relay>client", line, redacted=True)
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def _pipe(self, pending: bytes) -> None:
        upstream_sock, leftover = self.upstream.detach()
        self.upstream = None
        run_pipe(self.sock, upstream_sock, self.config.limits.idle_timeout, self.log,
                 to_upstream=pending, to_client=leftover)

    # Logging in ---------------------------------------------------------------------------

    def _login(self, name: str, password: str) -> LoginResult:
        protocol = self.listener.protocol
        self.log = self.log.bind(user=name)
        user, failure, reason = self.services.authenticator.check(name, password, protocol, self.ip)
        if user is not None and user.name != name:
            self.log = self.log.bind(user=user.name)   # the user's own name, not the case typed
        if failure is not None:
            self.log.warning("login_refused", reason=reason)
            if failure is Failure.BAD_CREDENTIALS:
                gevent.sleep(self.config.auth.failure_delay)
            return LoginResult(ok=False, failure=failure)
        mailbox = user.target_mailbox
        slot = f"{protocol}:{mailbox}"  # Office 365 counts each protocol's sessions apart
        if not self.services.sessions.acquire(slot):
            self.log.warning("login_refused", reason=f"{self.config.limits.sessions_per_mailbox} {protocol} "
                                                     f"sessions already open for {mailbox}")
            return LoginResult(ok=False, failure=Failure.TOO_MANY_SESSIONS)
        self.mailbox_held = slot
        result = self._login_upstream(user)
        if not result.ok:
            self.services.sessions.release(slot)
            self.mailbox_held = None
        return result

    def _login_upstream(self, user) -> LoginResult:
        protocol = self.listener.protocol
        try:
            self.upstream, capabilities = open_upstream(protocol, self.config, user, self.services.tokens,
                                                        self.services.upstream_tls, self.log)
        except TokenSetupError as exc:
            # Retried once the admin fixes the files; the reason names server paths, so the
            # client only hears that the relay is at fault, in try-again-later terms.
            self.log.warning("login_relay_setup", account=user.account, reason=exc.reason, fix=exc.command)
            return LoginResult(ok=False, failure=Failure.RELAY_SETUP)
        except TokenNeedsSignIn as exc:
            self.log.warning("login_needs_signin", account=user.account, reason=exc.reason,
                             aadsts=exc.aadsts, fix=exc.command)
            return LoginResult(ok=False, failure=Failure.NEEDS_SIGNIN, text=f"({exc.client_text})")
        except TokenUnavailable as exc:
            self.log.warning("login_unavailable", account=user.account, reason=exc.reason, aadsts=exc.aadsts)
            return LoginResult(ok=False, failure=Failure.UNAVAILABLE)
        except SmtpAuthDisabled as exc:
            self.log.error("login_smtp_auth_disabled", account=user.account, answer=exc.answer, fix=exc.admin_fix)
            return LoginResult(ok=False, failure=exc.failure, text="See https://aka.ms/smtp_auth_disabled")
        except UpstreamError as exc:
            self.log.warning("login_upstream_failed", account=user.account, reason=exc.reason, answer=exc.answer)
            text = "(Office 365 refused the relay's token.)" if exc.failure is Failure.NEEDS_SIGNIN else ""
            return LoginResult(ok=False, failure=exc.failure, text=text)
        self.services.capabilities.learn(protocol, capabilities)
        activity.record_login(self.config.state_dir, user.name, protocol)
        self.log.info("login_ok", account=user.account, mailbox=user.target_mailbox)
        return LoginResult(ok=True, capabilities=capabilities)


def serve_connection(sock: socket.socket, address, listener: Listener, services) -> None:
    Session(sock, address, listener, services).run()
