"""Edits users.yaml for `oauth-relay user ...` while keeping the admin's comments and layout.

Changes are validated by loading the result with the strict loader before the file is
replaced, and the file is replaced atomically so the hot-reload watcher never sees half a file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from typing import Dict, Optional, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from relay.config.errors import ConfigInvalid
from relay.config.load import load_users
from relay.config.models import AppConfig


class UserFileError(Exception):
    pass


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # a wrapped password hash is hard to read and to grep
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _read(path: str):
    yaml = _yaml()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""
    data = yaml.load(text) if text.strip() else None
    if data is None:
        # Only comments so far (the shipped file): ruamel would drop them, so they are kept
        # as a header above the first user.
        return yaml, CommentedMap(), text
    return yaml, data, ""


def _comment_lines(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return "".join(line for line in handle if line.lstrip().startswith("#"))


def _write(path: str, yaml: YAML, data, header: str, apps: Dict[str, AppConfig]) -> None:
    buffer = io.StringIO()
    if len(data):
        yaml.dump(data, buffer)
    text = buffer.getvalue()
    if header.strip():
        text = header.rstrip("\n") + "\n\n" + text if text else header
    elif not len(data) and os.path.exists(path):
        text = _comment_lines(path)  # ruamel drops the comments of a document it emptied
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o640
    fd, temp = tempfile.mkstemp(prefix=".users.", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        _validate(temp, path, apps)
        _copy_owner(path, temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _validate(temp: str, path: str, apps: Dict[str, AppConfig]) -> None:
    """Never write a file the relay would refuse; report errors against the real file name."""
    try:
        load_users(temp, apps)
    except ConfigInvalid as exc:
        raise ConfigInvalid([dataclasses.replace(error, file=path) for error in exc.errors])


def _copy_owner(path: str, temp: str) -> None:
    if os.path.exists(path) and os.geteuid() == 0:
        info = os.stat(path)
        os.chown(temp, info.st_uid, info.st_gid)


def add_user(path: str, name: str, password_hash: str, apps: Dict[str, AppConfig], *,
             account: Optional[str] = None, mailbox: Optional[str] = None, app: Optional[str] = None,
             protocols: Optional[Sequence[str]] = None) -> None:
    yaml, data, header = _read(path)
    if name in data:
        raise UserFileError(f"user {name!r} already exists (use `oauth-relay user passwd`)")
    entry = CommentedMap()
    entry["password"] = password_hash
    if protocols:
        seq = CommentedSeq(protocols)
        seq.fa.set_flow_style()
        entry["protocols"] = seq
    for key, value in (("account", account), ("mailbox", mailbox), ("app", app)):
        if value:
            entry[key] = value
    data[name] = entry
    _write(path, yaml, data, header, apps)


def set_password(path: str, name: str, password_hash: str, apps: Dict[str, AppConfig]) -> None:
    yaml, data, header = _read(path)
    if name not in data:
        raise UserFileError(f"no user {name!r} in {path}")
    data[name]["password"] = password_hash
    _write(path, yaml, data, header, apps)


def remove_user(path: str, name: str, apps: Dict[str, AppConfig]) -> None:
    yaml, data, header = _read(path)
    if name not in data:
        raise UserFileError(f"no user {name!r} in {path}")
    del data[name]
    _write(path, yaml, data, header, apps)
