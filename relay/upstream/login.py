"""Open an authenticated upstream session for a local user: token, connect, XOAUTH2, retry once."""

from __future__ import annotations

import ssl
from typing import Tuple

from relay.config.models import Config, User
from relay.upstream import imap, pop3, smtp
from relay.upstream.connection import UpstreamConnection
from relay.upstream.errors import MailboxRefused, TokenRefused
from relay.upstream.xoauth2 import xoauth2


def sasl_identity(protocol: str, user: User) -> str:
    # SMTP always authenticates as the token owner; a shared mailbox is the MAIL FROM there,
    # which Office 365 checks against Send As. IMAP and POP3 open the shared mailbox itself.
    return user.account if protocol == "smtp" else user.target_mailbox


def _authenticate(protocol: str, conn: UpstreamConnection, security: str, identity: str,
                  token: str, hostname: str) -> Tuple[str, ...]:
    sasl = xoauth2(identity, token)
    if protocol == "imap":
        return imap.login(conn, security, identity, sasl)
    if protocol == "pop3":
        return pop3.login(conn, security, identity, sasl)
    return smtp.login(conn, security, identity, sasl, hostname)


def open_upstream(protocol: str, config: Config, user: User, tokens, context: ssl.SSLContext, log
                  ) -> Tuple[UpstreamConnection, Tuple[str, ...]]:
    """Returns the logged-in connection and the upstream's capabilities.

    Raises TokenNeedsSignIn / TokenUnavailable from the token service, or UpstreamError.
    """
    endpoint = config.upstream.for_protocol(protocol)
    identity = sasl_identity(protocol, user)
    token = tokens.access_token(user.account, user.app)
    for attempt in (1, 2):
        conn = _connect(endpoint, context, config, log)
        try:
            capabilities = _authenticate(protocol, conn, endpoint.security, identity, token, config.hostname)
            conn.sock.settimeout(None)
            return conn, capabilities
        except TokenRefused as exc:
            conn.close()
            if attempt == 2:
                raise MailboxRefused(f"{exc.reason} even with a freshly refreshed token: the account may lack "
                                     f"access to {identity}, or {protocol} may be switched off for it",
                                     exc.answer) from exc
            log.info("upstream_refused_token", answer=exc.answer, action="refreshing the token once")
            token = tokens.access_token(user.account, user.app, force_refresh=True)
        except BaseException:
            conn.close()
            raise
    raise AssertionError("unreachable")


def _connect(endpoint, context, config: Config, log) -> UpstreamConnection:
    conn = UpstreamConnection(endpoint.host, endpoint.port, context, config.upstream.connect_timeout, log)
    conn.sock.settimeout(config.upstream.login_timeout)
    if endpoint.security == "tls":
        conn.start_tls()
    return conn


def probe_capabilities(protocol: str, config: Config, context: ssl.SSLContext, log) -> Tuple[str, ...]:
    """What the upstream offers before login (SMTP EHLO after STARTTLS, POP3 CAPA); no token needed."""
    endpoint = config.upstream.for_protocol(protocol)
    conn = _connect(endpoint, context, config, log)
    try:
        if protocol == "smtp":
            extensions = smtp.greet(conn, endpoint.security, config.hostname)
            conn.send_line(b"QUIT")
            return tuple(extensions)
        if protocol == "pop3":
            capabilities = pop3.greet(conn, endpoint.security)
            conn.send_line(b"QUIT")
            return tuple(capabilities)
        return ()
    finally:
        conn.close()
