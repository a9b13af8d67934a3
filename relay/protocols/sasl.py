"""SASL pieces shared by IMAP, POP3 and SMTP: base64 answers, PLAIN, LOGIN."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

# The SMTP LOGIN mechanism's two fixed challenges.
USERNAME_CHALLENGE = base64.b64encode(b"Username:").decode("ascii")
PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode("ascii")


class SaslError(ValueError):
    """A client answer that cannot be decoded; the text is safe to show."""


@dataclass(frozen=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: str

    def __repr__(self) -> str:
        return "PlainCredentials(authzid=%r, authcid=%r, password=<redacted>)" % (
            self.authzid,
            self.authcid,
        )

    @property
    def asks_for_other_identity(self) -> bool:
        """True when the client wants to act as someone other than itself."""
        return bool(self.authzid) and self.authzid != self.authcid


def is_cancel(answer: bytes) -> bool:
    """A lone `*` aborts an exchange (RFC 4954, 5034, 9051)."""
    return answer.strip() == b"*"


def decode_base64(answer: bytes) -> bytes:
    """Decode a client answer; a lone `=` is the empty initial response (RFC 4959)."""
    answer = answer.strip()
    if answer == b"=":
        return b""
    # Some clients drop the padding; restore it rather than refuse them.
    answer += b"=" * (-len(answer) % 4)
    try:
        return base64.b64decode(answer, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("Invalid base64 data") from None


def decode_text(answer: bytes) -> str:
    """Decode one base64 answer (the LOGIN mechanism's user or password)."""
    return credential_text(decode_base64(answer))


def decode_plain(answer: bytes) -> PlainCredentials:
    """Decode a PLAIN message: authzid NUL authcid NUL password (RFC 4616)."""
    parts = decode_base64(answer).split(b"\0")
    if len(parts) != 3:
        raise SaslError("Malformed PLAIN message")
    authzid, authcid, password = (credential_text(part) for part in parts)
    if not authcid:
        raise SaslError("Malformed PLAIN message: empty user name")
    return PlainCredentials(authzid, authcid, password)


def credential_text(data: bytes) -> str:
    """A user name or password as text: UTF-8 as the RFCs say, else Windows-1252, which is
    what old Windows mail programs send for a password such as 'Passwört'. Never fails, so
    such a password is checked (and matches the admin's) instead of refused as a syntax error."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")  # the five bytes cp1252 leaves undefined
