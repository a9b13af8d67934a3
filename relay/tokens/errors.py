"""What can go wrong with a token, in plain words, and whether waiting helps.

Entra ID answers a failed token request with an OAuth2 `error` and AADSTS codes. Some mean
"a human must sign in again" (permanent), others "try later" (transient). msal adds its own
ways to fail: network exceptions, MsalServiceError for 5xx (also replayed from its throttle
cache for Retry-After seconds), and a 400 replayed from cache for 60 s.
"""

from __future__ import annotations

import re
from typing import Optional

import requests


class TokenError(Exception):
    def __init__(self, reason: str, aadsts: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.aadsts = aadsts

    def __str__(self) -> str:
        code = f" (AADSTS{self.aadsts})" if self.aadsts else ""
        return f"{self.reason}{code}"

    @property
    def client_text(self) -> str:
        """What the legacy program may be told (the journal gets the reason and the fix)."""
        return self.reason


class TokenNeedsSignIn(TokenError):
    """Only a person can fix this: sign in again (after fixing the setup, if told so)."""

    def __init__(self, reason: str, aadsts: Optional[int] = None, command: Optional[str] = None):
        super().__init__(reason, aadsts)
        self.command = command

    def __str__(self) -> str:
        if not self.command:
            return super().__str__()
        # A command is run; a fix in words ("check the client secret ..., then run: ...") is read.
        is_command = self.command.startswith("oauth-relay ") or " " not in self.command
        fix = "run: " + self.command if is_command else self.command
        return f"{super().__str__()}; {fix}"


class TokenSetupError(TokenNeedsSignIn):
    """The relay's own setup is broken: a client secret or certificate file it cannot read, a
    token file it cannot decrypt. An admin must act, but no sign-in is recorded as needed: a
    refresh that failed so is retried (with the normal backoff), so fixing the file is enough.
    The reason names server paths, so the legacy program is told only that there is a problem."""

    CLIENT_TEXT = ("The relay's configuration for this account has a problem; the administrator "
                   "must look at the relay's journal.")

    @property
    def client_text(self) -> str:
        return self.CLIENT_TEXT


class TokenUnavailable(TokenError):
    """Transient: the sign-in service is unreachable, slow, throttling or failing. Retry later."""


class TokenStoreError(Exception):
    """The token store cannot be used safely (permissions, wrong key, damaged file)."""


# Codes a person must act on, and what to tell them.
EXPLAINED = {
    700082: "the refresh token expired because the account was not used for 90 days",
    70043: "the organization's Conditional Access sign-in frequency policy requires a new sign-in",
    50173: "the sign-in was revoked, usually because the password was changed or reset",
    50133: "the session is no longer valid: the password was changed or the session expired",
    7000112: "the app registration is disabled in Entra ID; an admin must enable it first",
    65001: "nobody has consented to the app's IMAP/POP/SMTP permissions; an admin must grant "
           "consent in Entra ID (or the user accepts it at sign-in)",
    700025: "the app is a public client in Entra ID but the relay sent a secret or certificate; "
            "set `type: public` without client_secret_file/certificate_file",
    7000218: "the app registration expects a secret but none was sent; enable 'Allow public client "
             "flows' in Entra ID, or use `type: confidential` with a client secret or certificate",
    7000012: "the sign-in belongs to a different tenant than the app's `tenant:` setting",
    50011: "the redirect URI is not registered; add http://localhost under 'Mobile and desktop "
           "applications' in the app registration",
    900144: "Entra ID says the request lacks a required parameter (scope); check the app's "
            "settings and any proxy that rewrites requests",
    7000215: "the client secret is wrong; put the secret's value (not its id) in client_secret_file",
    7000222: "the client secret has expired; create a new one in Entra ID",
    700027: "the certificate is not registered with the app (or was rotated); upload it to the "
            "app registration",
    700016: "the client id is unknown in this tenant; check client_id and tenant",
    50076: "multi-factor authentication is required; sign in interactively",
    50079: "the user must register for multi-factor authentication, then sign in",
    53003: "Conditional Access blocked the sign-in",
    50057: "the user account is disabled",
    50053: "the account is locked (too many failed sign-ins or blocked by policy)",
}
PERMANENT_CODES = frozenset(EXPLAINED)
PERMANENT_ERRORS = {
    "invalid_grant": "Entra ID no longer accepts the stored sign-in",
    "interaction_required": "Entra ID wants the user to sign in interactively again",
    "consent_required": "consent to the app's permissions is missing",
    "login_required": "the user must sign in again",
    "invalid_client": "Entra ID rejected the app's credentials: the client secret or certificate "
                      "is wrong, expired, or not registered with the app",
    "unauthorized_client": "the app registration does not allow this kind of sign-in",
    "invalid_scope": "the app may not ask for the IMAP/POP/SMTP permissions it asked for",
    "access_denied": "the sign-in was declined",
    "authorization_declined": "the sign-in was declined",
    "expired_token": "the sign-in code expired before it was used",
    "bad_verification_code": "the sign-in code was not recognized",
}
_AADSTS = re.compile(r"AADSTS(\d+)")


def aadsts_code(result: dict) -> Optional[int]:
    codes = result.get("error_codes") or []
    for code in codes:
        try:
            return int(code)
        except (TypeError, ValueError):
            continue
    match = _AADSTS.search(str(result.get("error_description") or ""))
    return int(match.group(1)) if match else None


def _first_line(text: str, limit: int = 240) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:limit]


def from_result(result: dict, command: Optional[str]) -> TokenError:
    """Turn msal's error dict into TokenNeedsSignIn (permanent) or TokenUnavailable."""
    error = str(result.get("error") or "unknown_error")
    code = aadsts_code(result)
    if code in PERMANENT_CODES:
        return TokenNeedsSignIn(EXPLAINED[code], code, command)
    if error in PERMANENT_ERRORS:
        detail = _first_line(str(result.get("error_description") or ""))
        reason = PERMANENT_ERRORS[error] + (f" ({detail})" if detail else "")
        return TokenNeedsSignIn(reason, code, command)
    # temporarily_unavailable, server_error, throttling, and anything unknown: retry later.
    detail = _first_line(str(result.get("error_description") or "")) or error
    return TokenUnavailable(f"the sign-in service answered {error}: {detail}", code)


def from_exception(exc: BaseException) -> TokenUnavailable:
    """Network failures, timeouts, 5xx (msal's MsalServiceError) and unparsable answers."""
    if isinstance(exc, requests.Timeout):
        reason = "the sign-in service did not answer in time"
    elif isinstance(exc, requests.ConnectionError):
        reason = "cannot reach the sign-in service"
    elif isinstance(exc, requests.RequestException):
        reason = f"request to the sign-in service failed: {type(exc).__name__}"
    elif type(exc).__name__ == "MsalServiceError":
        reason = f"the sign-in service failed ({_first_line(str(exc))}); msal waits Retry-After"
    elif isinstance(exc, ValueError):
        reason = f"the sign-in service gave an unusable answer: {_first_line(str(exc), 120)}"
    else:
        reason = f"token request failed: {type(exc).__name__}"
    return TokenUnavailable(reason)
