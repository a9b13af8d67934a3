"""Retry-After as the sign-in service sends it: seconds or an HTTP date, on 429 and 503 only."""

from __future__ import annotations

import email.utils
import time

import pytest

from relay.tokens.http import RETRY_AFTER_MAX, retry_after_seconds


class _Response:
    def __init__(self, status: int, retry_after=None):
        self.status_code = status
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}


@pytest.mark.parametrize("status,header,expected", [
    (429, "30", 30.0), (503, " 7 ", 7.0), (429, "0", 0.0), (429, "-5", 0.0),
    (429, "999999", RETRY_AFTER_MAX), (429, None, None), (429, "soon", None),
    (400, "30", None), (200, "30", None),
])
def test_retry_after_seconds(status, header, expected):
    assert retry_after_seconds(_Response(status, header)) == expected


def test_retry_after_as_an_http_date():
    header = email.utils.formatdate(time.time() + 90, usegmt=True)
    assert 85 <= retry_after_seconds(_Response(503, header)) <= 90
