"""The HTTP client msal uses: our CA choice, a timeout on every request, quiet logs.

requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override `verify` unless trust_env is off,
and msal passes no timeout of its own, so a hung sign-in service would hang a worker.
With trust_env off we still honour HTTPS_PROXY/NO_PROXY ourselves, except for loopback.
"""

from __future__ import annotations

import email.utils
import ipaddress
import time
from typing import Optional, Tuple, Union
from urllib.parse import urlsplit

import requests

from relay import journal


def _log():
    # Bound per call: a logger bound before journal.configure() would keep the old setup.
    return journal.get_logger(component="tokens.http")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


RETRY_AFTER_MAX = 3600.0   # seconds; a longer Retry-After is taken as this


def retry_after_seconds(response) -> Optional[float]:
    """The wait a 429/503 asks for (RFC 9110 Retry-After: seconds or an HTTP date), else None."""
    if response.status_code not in (429, 503):
        return None
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(RETRY_AFTER_MAX, seconds))


class TimeoutSession(requests.Session):
    def __init__(self, timeout: Tuple[float, float], verify: Union[str, bool] = True):
        super().__init__()
        self.trust_env = False
        self.verify = verify
        self.timeout = timeout
        # The Retry-After of the last answer. msal honours it only inside this process; the
        # token service writes it into the shared record so that every worker waits.
        self.retry_after: Optional[float] = None

    def request(self, method, url, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        parts = urlsplit(url)
        if "proxies" not in kwargs and not _is_loopback(parts.hostname or ""):
            kwargs["proxies"] = requests.utils.get_environ_proxies(url)
        started = time.monotonic()
        where = f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: it can hold a code
        try:
            response = super().request(method, url, **kwargs)
        except requests.RequestException as exc:
            _log().debug("idp request failed", method=method, url=where, error=type(exc).__name__,
                       ms=round((time.monotonic() - started) * 1000))
            raise
        _log().debug("idp request", method=method, url=where, status=response.status_code,
                   ms=round((time.monotonic() - started) * 1000))
        self.retry_after = retry_after_seconds(response)
        return response


def make_http_client(ca_file: Optional[str], connect_timeout: float = 20.0,
                     read_timeout: float = 30.0) -> TimeoutSession:
    """ca_file (upstream.ca_file) replaces the default trust store (certifi) when set."""
    return TimeoutSession((connect_timeout, read_timeout), verify=ca_file or True)
