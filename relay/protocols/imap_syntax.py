"""The slice of IMAP syntax needed before login: tags, literals, astrings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

# Tag characters: ASTRING-CHAR minus "+" (RFC 9051 section 9).
_TAG = re.compile(rb'[\x21\x23\x24\x26-\x27\x2c-\x5b\x5d-\x7a\x7c\x7d\x7e]+\Z')
_MAX_TAG = 64
# "{n}" (synchronising) or "{n+}" (LITERAL+) closing a line, as its own token.
_LITERAL_MARKER = re.compile(rb"(?:\A|(?<= ))\{(\d+)(\+?)\}\Z")


class ImapSyntaxError(ValueError):
    """Arguments that do not parse; the text is safe to show the client."""


@dataclass(frozen=True)
class Literal:
    """The bytes of a literal, kept apart from the line text around it."""

    data: bytes

    def __repr__(self) -> str:
        return "Literal(<%d bytes>)" % len(self.data)


# A command arrives as line text and literals in turn.
Segment = Union[bytes, Literal]


@dataclass(frozen=True)
class LiteralMarker:
    size: int
    synchronizing: bool


def split_tag(line: bytes) -> Optional[Tuple[bytes, bytes]]:
    """(tag, rest of the line), or None when the line has no usable tag."""
    tag, _, rest = line.partition(b" ")
    if len(tag) > _MAX_TAG or not _TAG.match(tag):
        return None
    return tag, rest


def trailing_literal(text: bytes) -> Optional[LiteralMarker]:
    match = _LITERAL_MARKER.search(text)
    if match is None:
        return None
    return LiteralMarker(int(match.group(1)), synchronizing=not match.group(2))


def parse_astrings(segments: List[Segment]) -> List[bytes]:
    """Split arguments into atoms, quoted strings and literals (their values)."""
    values: List[bytes] = []
    for index, segment in enumerate(segments):
        if isinstance(segment, Literal):
            values.append(segment.data)
            continue
        followed_by_literal = index + 1 < len(segments)
        if followed_by_literal:
            segment = _LITERAL_MARKER.sub(b"", segment)
        values.extend(_text_values(segment))
    return values


def quote(text: str) -> str:
    """Render a string as an IMAP quoted string."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _text_values(text: bytes) -> List[bytes]:
    values = []
    position = 0
    while position < len(text):
        if text[position : position + 1] == b" ":
            position += 1
        elif text[position : position + 1] == b'"':
            value, position = _quoted(text, position + 1)
            values.append(value)
        else:
            # Lenient atoms: legacy clients send passwords with %, * or 8-bit
            # characters unquoted; everything up to the next space is taken.
            end = text.find(b" ", position)
            end = len(text) if end < 0 else end
            values.append(text[position:end])
            position = end
    return values


def _quoted(text: bytes, position: int) -> Tuple[bytes, int]:
    """Read a quoted string whose opening quote ends before `position`."""
    value = bytearray()
    while position < len(text):
        char = text[position : position + 1]
        if char == b'"':
            if text[position + 1 : position + 2] not in (b"", b" "):
                raise ImapSyntaxError("Missing space after quoted string")
            return bytes(value), position + 1
        if char == b"\\":
            char = text[position + 1 : position + 2]
            if char not in (b'"', b"\\"):
                raise ImapSyntaxError("Invalid escape in quoted string")
            position += 1
        value += char
        position += 1
    raise ImapSyntaxError("Unterminated quoted string")
