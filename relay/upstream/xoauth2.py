"""The SASL XOAUTH2 initial response Office 365 expects."""

from __future__ import annotations

import base64


def xoauth2(mailbox: str, access_token: str) -> bytes:
    raw = f"user={mailbox}\x01auth=Bearer {access_token}\x01\x01".encode("utf-8")
    return base64.b64encode(raw)
