"""What the master checks before it lets a configuration reach any worker."""

from __future__ import annotations

import hashlib
import os
import ssl
from typing import List, Optional, Tuple

from relay.config import ConfigInvalid, load_config, load_users
from relay.config.models import Config, Users
from relay.tls_local import server_context
from relay.tokens import TokenStoreError
from relay.tokens.store import TokenStore


class Refused(Exception):
    def __init__(self, errors: List[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def whole_config(path: str, running: Optional[Config] = None) -> Tuple[Config, Users]:
    """relay.yaml and its users file, all or nothing; errors read FILE:LINE:COL: path: message.

    The files the settings name are read here, as the relay's own user, as check-config
    reads them. With `running` (a reload), settings only a restart may change are refused
    before anything below makes directories, keys or certificates for the new values."""
    try:
        config, users = load_config(path, check_files=True, running=running)
    except ConfigInvalid as exc:
        raise Refused([str(error) for error in exc.errors]) from None
    try:
        # Also makes the `tls: auto` certificate here, once, before workers race to make it.
        server_context(config)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise Refused([f"{config.path}: tls: cannot use the certificate and key: {exc}"]) from None
    _check_writable(config)
    try:
        # Makes state_dir and the token key once, and refuses a lost key or loose permissions
        # here, where the admin sees it, rather than as workers that cannot boot.
        TokenStore(config.state_dir, config.tokens.key_file)
    except (TokenStoreError, OSError) as exc:
        raise Refused([f"{config.path}: tokens: {exc}"]) from None
    return config, users


def _check_writable(config: Config) -> None:
    # Found here, a reload is refused; found when the new journal is opened, the master fails.
    try:
        os.makedirs(config.runtime_dir, mode=0o755, exist_ok=True)
        if config.journal.file:
            open(config.journal.file, "a", encoding="utf-8").close()
    except OSError as exc:
        raise Refused([f"{config.path}: cannot write {exc.filename}: {exc.strerror}"]) from None


def users_file(config: Config) -> Users:
    try:
        return load_users(config.users_file, config.apps)
    except ConfigInvalid as exc:
        raise Refused([str(error) for error in exc.errors]) from None


def digest(path: str) -> str:
    """What the users file holds now, so a save that changed nothing is ignored."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
