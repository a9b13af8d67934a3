"""Configuration errors that point at the exact place in the admin's file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

Path = Tuple[object, ...]


@dataclass(frozen=True)
class ConfigError:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigInvalid(Exception):
    """Raised with every error found, so the admin can fix them all in one pass."""

    def __init__(self, errors: List[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def dotted(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text
