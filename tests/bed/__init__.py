"""End-to-end test bed: a local stand-in for Office 365.

``Bed`` starts, in a fresh temp dir:
- a throw-away CA (``ca_file``) and server certificates;
- the identity provider (own process, HTTPS on 127.0.0.1) that msal works against;
- a real Dovecot (IMAP 143 STARTTLS, IMAPS, POP3 STLS, POP3S) on 127.0.0.2;
- a real Postfix submission (STARTTLS, AUTH via Dovecot) on 127.0.0.2.
Dovecot and Postfix accept only XOAUTH2/OAUTHBEARER tokens that the IdP says
are active, for the login's own mailbox or one granted to the token's owner.

tests/conftest.py offers it as the session fixture ``bed``.
"""
from __future__ import annotations

import atexit
import base64
import imaplib
import os
import poplib
import shutil
import smtplib
import ssl
import tempfile
import threading
import time
import uuid
import warnings
from typing import Iterable, List, Optional, Tuple

import requests

from .certs import CertAuthority, ClientCertificate, new_client_certificate
from .dovecot import Dovecot
from .idp import DEFAULT_TENANT, IdpControl, IdpProcess
from .postfix import REJECT_RECIPIENT, TEMPFAIL_RECIPIENT, Postfix
from .procs import BedError

__all__ = ["Bed", "BedError", "ClientCertificate", "USER_SCOPES", "APP_SCOPES",
           "MAIL_DOMAIN", "REJECT_RECIPIENT", "TEMPFAIL_RECIPIENT", "xoauth2", "Xoauth2"]

MAIL_DOMAIN = "example.test"
RESOURCE = "https://outlook.office.com/"
# Delegated scopes a relay asks for (one token serves IMAP, POP3 and SMTP).
USER_SCOPES = [RESOURCE + "IMAP.AccessAsUser.All", RESOURCE + "POP.AccessAsUser.All",
               RESOURCE + "SMTP.Send"]
# App-only (client credentials) scope.
APP_SCOPES = ["https://outlook.office365.com/.default"]
UPSTREAM_HOST = "127.0.0.2"
IDP_HOST = "127.0.0.1"


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, not yet base64-encoded."""
    return "user=%s\x01auth=Bearer %s\x01\x01" % (user, token)


class Xoauth2:
    """imaplib/smtplib authobject: the token first, then an empty answer.

    Dovecot answers a refused token with a JSON challenge (as Gmail does) and
    fails only after the client's empty reply.
    """

    def __init__(self, user: str, token: str) -> None:
        self.response = xoauth2(user, token)
        self.calls = 0

    def __call__(self, challenge=None):
        self.calls += 1
        return self.response if self.calls == 1 else ""


class BedSession(requests.Session):
    """requests Session for msal: trusts only the bed CA, ignores the environment.

    msal's ROPC asks https://<host>/common/userrealm without the authority's
    port; this session sends such port-less IdP URLs to the IdP's port.
    """

    def __init__(self, ca_file: str, idp_base_url: str, timeout: float = 30.0) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = ca_file
        self._portless = "https://%s/" % IDP_HOST
        self._idp_base = idp_base_url.rstrip("/") + "/"
        self._timeout = timeout

    def request(self, method, url, *args, **kwargs):
        if isinstance(url, str) and url.startswith(self._portless):
            url = self._idp_base + url[len(self._portless):]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


class Bed:
    """One complete test bed. Use start(), then close() (idempotent)."""

    __test__ = False  # not a pytest test class
    upstream_host = UPSTREAM_HOST
    mail_domain = MAIL_DOMAIN
    tenant = DEFAULT_TENANT
    user_scopes = USER_SCOPES
    app_scopes = APP_SCOPES
    reject_recipient = REJECT_RECIPIENT
    tempfail_recipient = TEMPFAIL_RECIPIENT

    def __init__(self, max_connections: int = 200, root: Optional[str] = None) -> None:
        self.max_connections = max_connections
        self.root = root or tempfile.mkdtemp(prefix="oauth-relay-bed-")
        self._own_root = root is None
        os.chmod(self.root, 0o755)  # Dovecot/Postfix users must traverse it
        self._ca = CertAuthority(os.path.join(self.root, "certs"))
        self.ca_file = self._ca.ca_file
        self.grants_dir = os.path.join(self.root, "grants")
        os.makedirs(self.grants_dir, mode=0o755, exist_ok=True)
        self._sessions: List[requests.Session] = []
        self._lock = threading.Lock()
        self._token_app = None
        self._token_session: Optional[requests.Session] = None
        self._idp_process: Optional[IdpProcess] = None
        self.idp: Optional[IdpControl] = None
        self.dovecot: Optional[Dovecot] = None
        self.dovecot_auth: Optional[Dovecot] = None
        self.postfix: Optional[Postfix] = None
        self.public_client_id = ""
        self._closed = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "Bed":
        atexit.register(self.close)
        cert, key = self._ca.issue_cert(os.path.join(self.root, "certs"))
        self._idp_process = IdpProcess(self.root, cert, key, self.grants_dir)
        self._idp_process.start()
        self.idp = IdpControl(IDP_HOST, self._idp_process.port, self.ca_file,
                              self._idp_process.sender_map_port)
        self.public_client_id = self.idp.register_app(type="public")
        self.dovecot = Dovecot(self.root, cert, key, self.ca_file, self.idp.base_url,
                               self.grants_dir, self.max_connections)
        self.dovecot.start()
        # Postfix's SASL and delivery use their own Dovecot (auth only), so
        # stopping self.dovecot takes IMAP/POP3 down but not SMTP.
        self.dovecot_auth = Dovecot(self.root, cert, key, self.ca_file, self.idp.base_url,
                                    self.grants_dir, self.max_connections,
                                    name="dovecot-auth", mail_services=False)
        self.dovecot_auth.start()
        self.postfix = Postfix(self.root, cert, key, self.dovecot_auth.auth_socket,
                               self.dovecot_auth.lda_binary, self.dovecot_auth.lda_config_file,
                               self.dovecot.mail_root,
                               "%s:%d" % (IDP_HOST, self.idp.sender_map_port),
                               self.max_connections)
        self.postfix.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_sessions()
        if self._token_session is not None:
            self._token_session.close()
        stops = [d.stop for d in (self.postfix, self.dovecot_auth, self.dovecot) if d]
        if stops:  # Dovecot's stop waits ~1 s; stop the daemons side by side
            threads = [threading.Thread(target=_quietly_stop, args=(stop,)) for stop in stops]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        if self._idp_process is not None:
            _quietly_stop(self._idp_process.stop)
        if self.idp is not None:
            self.idp.close()
        if self._own_root and not os.environ.get("BED_KEEP_TMP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def ensure_running(self) -> None:
        """Restart Dovecot (both)/Postfix if a test stopped them."""
        for daemon in (self.dovecot, self.dovecot_auth, self.postfix):
            if not daemon.running:
                daemon.start()

    def reset_idp(self) -> None:
        """Forget all IdP state (apps, tokens, grants) but keep the bed's public app."""
        self.idp.reset()
        self.idp.register_app(client_id=self.public_client_id, type="public")

    def after_test(self) -> None:
        """Undo what one test may have changed (called by the function fixture)."""
        self.close_sessions()
        self.ensure_running()
        self.idp.reset_test_state()

    # ---------------------------------------------------------------- ports
    @property
    def imap_port(self) -> int:
        return self.dovecot.imap_port

    @property
    def imaps_port(self) -> int:
        return self.dovecot.imaps_port

    @property
    def pop3_port(self) -> int:
        return self.dovecot.pop3_port

    @property
    def pop3s_port(self) -> int:
        return self.dovecot.pop3s_port

    @property
    def lmtp_port(self) -> int:
        return self.dovecot.lmtp_port

    @property
    def smtp_port(self) -> int:
        return self.postfix.smtp_port

    # ---------------------------------------------------------------- helpers
    def issue_cert(self, directory: str) -> Tuple[str, str]:
        """(cert_path, key_path) signed by the bed CA, for localhost/127.0.0.1/.2/::1."""
        return self._ca.issue_cert(directory)

    @staticmethod
    def new_client_certificate() -> ClientCertificate:
        """A fresh RSA app certificate for client-assertion (certificate) logins."""
        return new_client_certificate()

    def new_account(self, prefix: str = "u") -> str:
        """A unique address, so tests never see each other's mail."""
        return "%s-%s@%s" % (prefix, uuid.uuid4().hex[:12], MAIL_DOMAIN)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the bed CA (and nothing else)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def msal_http_client(self) -> requests.Session:
        """An ``http_client`` for msal; closed automatically after the test."""
        session = BedSession(self.ca_file, self.idp.base_url)
        with self._lock:
            self._sessions.append(session)
        return session

    def close_sessions(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def token_for(self, account: str, scopes: Optional[Iterable[str]] = None) -> str:
        """A fresh access token for ``account`` (msal, ROPC, the bed's public app)."""
        result = self.token_result_for(account, scopes)
        if "access_token" not in result:
            raise BedError("no token for %s: %s" % (account, result))
        return result["access_token"]

    def token_result_for(self, account: str, scopes: Optional[Iterable[str]] = None) -> dict:
        import msal
        with self._lock:
            if self._token_app is None:
                self._token_session = BedSession(self.ca_file, self.idp.base_url)
                self._token_app = msal.PublicClientApplication(
                    self.public_client_id, authority=self.idp.authority(),
                    instance_discovery=False, http_client=self._token_session)
            app = self._token_app
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ROPC is deprecated
            return app.acquire_token_by_username_password(
                account, "bed-password", scopes=list(scopes or USER_SCOPES))

    def wait_for_delivery(self, mailbox: str, count: int = 1,
                          timeout: float = 15.0) -> List[bytes]:
        """Wait until ``mailbox`` holds ``count`` messages; return them as stored (LF)."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.dovecot.messages(mailbox)
            if len(messages) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if len(messages) < count:
            raise BedError("%s has %d of %d messages after %.0f s\n--- postfix.log ---\n%s"
                           % (mailbox, len(messages), count, timeout,
                              self.postfix.log_tail()))
        return messages

    # ---------------------------------------------------------------- direct logins
    def imap_login(self, user: str, token: str, implicit_tls: bool = False,
                   timeout: float = 15.0) -> imaplib.IMAP4:
        """An authenticated IMAP connection straight to Dovecot (caller logs out)."""
        if implicit_tls:
            conn = imaplib.IMAP4_SSL(UPSTREAM_HOST, self.imaps_port,
                                     ssl_context=self.ssl_context(), timeout=timeout)
        else:
            conn = imaplib.IMAP4(UPSTREAM_HOST, self.imap_port, timeout=timeout)
        try:
            if not implicit_tls:
                conn.starttls(self.ssl_context())
            conn.authenticate("XOAUTH2", Xoauth2(user, token))
        except BaseException:
            _quietly(conn.shutdown)
            raise
        return conn

    def pop3_login(self, user: str, token: str, implicit_tls: bool = True,
                   timeout: float = 15.0) -> poplib.POP3:
        """An authenticated POP3 connection (two-step AUTH XOAUTH2; caller quits)."""
        if implicit_tls:
            conn = poplib.POP3_SSL(UPSTREAM_HOST, self.pop3s_port,
                                   context=self.ssl_context(), timeout=timeout)
        else:
            conn = poplib.POP3(UPSTREAM_HOST, self.pop3_port, timeout=timeout)
        try:
            if not implicit_tls:
                conn.stls(self.ssl_context())
            pop3_xoauth2(conn, user, token)
        except BaseException:
            _quietly(conn.close)
            raise
        return conn

    def smtp_login(self, user: str, token: str, timeout: float = 15.0) -> smtplib.SMTP:
        """An authenticated submission connection to Postfix (caller quits)."""
        conn = smtplib.SMTP(UPSTREAM_HOST, self.smtp_port, timeout=timeout)
        try:
            conn.starttls(context=self.ssl_context())
            conn.auth("XOAUTH2", Xoauth2(user, token), initial_response_ok=False)
        except BaseException:
            _quietly(conn.close)
            raise
        return conn


def pop3_xoauth2(conn: poplib.POP3, user: str, token: str) -> bytes:
    """Two-step POP3 AUTH XOAUTH2 (as Office 365 needs); raises poplib.error_proto."""
    reply = conn._shortcmd("AUTH XOAUTH2")  # "+ "
    if not reply.startswith(b"+"):
        raise poplib.error_proto(reply)
    encoded = base64.b64encode(xoauth2(user, token).encode("utf-8")).decode("ascii")
    conn._putcmd(encoded)
    reply = conn._getline()[0]
    if reply.startswith(b"+ "):  # Dovecot's JSON challenge after a refused token
        conn._putcmd("")
        reply = conn._getline()[0]
    if not reply.startswith(b"+OK"):
        raise poplib.error_proto(reply)
    return reply


def _quietly_stop(stop) -> None:
    try:
        stop()
    except BedError:
        pass


def _quietly(close) -> None:
    try:
        close()
    except OSError:
        pass
