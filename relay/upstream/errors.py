"""How an upstream login can fail, in terms the session can answer the client with."""

from __future__ import annotations

from relay.protocols.base import Failure


class UpstreamError(Exception):
    """The upstream could not be used; `answer` is its own reply (for the journal)."""

    failure = Failure.UNAVAILABLE

    def __init__(self, reason: str, answer: str = ""):
        self.reason = reason
        self.answer = answer
        super().__init__(f"{reason}: {answer}" if answer else reason)


class TokenRefused(UpstreamError):
    """The upstream said no to our token: refresh it once and try again."""

    failure = Failure.NEEDS_SIGNIN


class MailboxRefused(UpstreamError):
    """The upstream refused even a freshly refreshed token: the sign-in itself is fine (a new
    `oauth-relay login` would not help), but the account may not open that mailbox: a shared
    mailbox without Full Access, or the protocol switched off for the mailbox."""

    failure = Failure.MAILBOX_REFUSED


class SmtpAuthDisabled(UpstreamError):
    """Office 365 535 5.7.139: SMTP AUTH is switched off for the tenant or the mailbox."""

    failure = Failure.SMTP_AUTH_DISABLED
    admin_fix = ("Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false, or "
                 "allow SMTP AUTH for the tenant (Set-TransportConfig -SmtpClientAuthenticationDisabled $false)")


class MailboxInUse(UpstreamError):
    failure = Failure.IN_USE


class UpstreamPermanent(UpstreamError):
    """POP3 [SYS/PERM] (RFC 3206): a system problem upstream that will not go away without an
    administrator; the client is told so instead of being told to try again."""

    failure = Failure.UPSTREAM_PERMANENT
