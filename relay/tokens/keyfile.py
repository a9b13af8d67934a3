"""The token store's key and its AES-GCM envelope.

A server has no desktop keyring (msal-extensions' Linux encryption needs one), so the relay
keeps a random 256-bit key in a 0600 file and seals each token file with AES-GCM. The file's
name is bound into the authenticated data, so one account's file cannot be swapped for
another's.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.tokens.errors import TokenStoreError

KEY_BYTES = 32
NONCE_BYTES = 12
MAGIC = b"ORT1"  # format version: magic, nonce, ciphertext+tag


def check_private(path: str, what: str, allow_group: bool = False) -> os.stat_result:
    """Refuse files others could read: a token or key there is as good as stolen."""
    st = os.stat(path)
    loose = st.st_mode & (0o007 if allow_group else 0o077)
    if loose:
        mode = stat.S_IMODE(st.st_mode)
        fix = "chmod o-rwx" if allow_group else "chmod 600"
        raise TokenStoreError(f"{what} {path} is readable by {'others' if allow_group else 'group or others'} "
                              f"(mode {mode:04o}); refusing to use it. Fix: {fix} {path}")
    return st


def _parse_key(data: bytes, path: str) -> bytes:
    key = data if len(data) == KEY_BYTES else b""
    if not key:
        try:
            key = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
    if len(key) != KEY_BYTES:
        raise TokenStoreError(f"token key {path} is not a {KEY_BYTES}-byte key (base64 or raw)")
    return key


def read_key(path: str) -> bytes:
    check_private(path, "token key")
    with open(path, "rb") as handle:
        return _parse_key(handle.read(4096), path)


def create_key(path: str) -> bytes:
    """Make a new key file; if another process made one first, use theirs."""
    key = os.urandom(KEY_BYTES)
    folder = os.path.dirname(path) or "."
    temp = os.path.join(folder, f".token.key.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(key) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # fails if it exists: never two different keys
        except FileExistsError:
            return read_key(path)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    return key


def seal(key: bytes, plaintext: bytes, name: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, MAGIC + name.encode("utf-8"))


def unseal(key: bytes, blob: bytes, name: str, path: str) -> bytes:
    head = len(MAGIC) + NONCE_BYTES
    if not blob.startswith(MAGIC) or len(blob) < head + 16:
        raise TokenStoreError(f"token file {path} is not a relay token file (or is truncated)")
    try:
        return AESGCM(key).decrypt(blob[len(MAGIC):head], blob[head:], MAGIC + name.encode("utf-8"))
    except InvalidTag:
        raise TokenStoreError(f"token file {path} cannot be decrypted with this key: wrong key "
                              "file, or the file was damaged or copied from another account")
