"""Typed access to a located YAML document that collects errors instead of stopping at one."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from relay.config.errors import ConfigError, ConfigInvalid, Path
from relay.config.strict_yaml import LocatedDocument

_MISSING = object()


class Reader:
    def __init__(self, document: LocatedDocument):
        self.document = document
        self.errors: List[ConfigError] = []

    def error(self, path: Path, message: str, at_key: bool = False) -> None:
        self.errors.append(self.document.error(path, message, at_key))

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConfigInvalid(sorted(self.errors, key=lambda e: (e.file, e.line, e.column)))

    def value(self, path: Path, default=_MISSING):
        node = self.document.data
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                if default is _MISSING:
                    self.error(path, "is required")
                    return None
                return default
        return node

    def mapping(self, path: Path, allowed: Iterable[str], required: bool = False) -> dict:
        data = self.value(path, _MISSING if required else None)
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, "must be a mapping of keys to values")
            return {}
        known = set(allowed)
        for key in data:
            if key not in known:
                hint = ", ".join(sorted(known))
                self.error(path + (key,), f"unknown key (expected one of: {hint})", at_key=True)
        return data

    def string(self, path: Path, default=_MISSING, choices: Optional[Sequence[str]] = None,
               allow_none: bool = False) -> Optional[str]:
        value = self.value(path, default)
        if value is None and (allow_none or default is None):
            return None
        if not isinstance(value, str) or value == "":
            self.error(path, "must be a non-empty string")
            return None if default is _MISSING else default
        if choices is not None and value not in choices:
            self.error(path, f"must be one of: {', '.join(choices)} (got {value!r})")
            return None if default is _MISSING else default
        return value

    def integer(self, path: Path, default=_MISSING, low: int = 0, high: int = 2 ** 31) -> Optional[int]:
        value = self.value(path, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, "must be a whole number")
            return None if default is _MISSING else default
        if not low <= value <= high:
            self.error(path, f"must be between {low} and {high} (got {value})")
            return None if default is _MISSING else default
        return value

    def number(self, path: Path, default: float, low: float = 0.0, high: float = 10 ** 9) -> float:
        value = self.value(path, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, "must be a number")
            return default
        if not low <= value <= high:
            self.error(path, f"must be between {low:g} and {high:g} (got {value:g})")
            return default
        return float(value)

    def string_list(self, path: Path, default: Sequence[str]) -> List[str]:
        value = self.value(path, None)
        if value is None:
            return list(default)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.error(path, "must be a list of strings")
            return list(default)
        return value
