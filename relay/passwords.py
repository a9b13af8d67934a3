"""Local password hashes: scrypt from the standard library, compared in constant time."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

# n = 2**15, r = 8: about 32 MiB and ~0.1 s per hash, Dovecot/libsodium's interactive level.
LOG_N, R, P = 15, 8, 1
_MAXMEM = 64 * 1024 * 1024
PREFIX = "$scrypt$"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, log_n: int = LOG_N) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** log_n, r=R, p=P,
                            maxmem=_MAXMEM, dklen=32)
    return f"{PREFIX}ln={log_n},r={R},p={P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches; False for a mismatch or a hash this code cannot read."""
    try:
        params, salt, digest = encoded[len(PREFIX):].split("$")
        settings = dict(item.split("=") for item in params.split(","))
        log_n, r, p = int(settings["ln"]), int(settings["r"]), int(settings["p"])
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=_unb64(salt), n=2 ** log_n, r=r, p=p,
                                maxmem=_MAXMEM, dklen=len(expected))
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.lru_cache(maxsize=1)
@functools.lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash to check when the user does not exist, so unknown names cost as much as wrong
    passwords and cannot be told apart by timing. Made once: making it is a slow hash too."""
    return hash_password("not a real password")


def verify_unknown_user(password: str) -> bool:
    """The work a wrong password costs, for a name that has no user; always False."""
    verify_password(password, dummy_hash())
    return False
