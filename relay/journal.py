"""The journal: structlog, one event per line, secrets redacted before anything is written.

Levels run from `only-error` to `full-debug`; full-debug adds every protocol line on both
sides (through `wire()`), which is why redaction happens here, once, for every event.
"""

from __future__ import annotations

import base64
import datetime
import re
import sys
import threading
from typing import Optional, TextIO

import structlog

WIRE = 5  # below DEBUG: protocol lines, only at full-debug
LEVELS = {"only-error": 40, "warning": 30, "info": 20, "debug": 10, "full-debug": WIRE}
_LEVEL_NAMES = {50: "critical", 40: "error", 30: "warning", 20: "info", 10: "debug", WIRE: "wire"}
REDACTED = "<redacted>"

SECRET_KEYS = re.compile(r"pass(word)?|secret|token|assertion|sasl|credential|authorization|"
                         r"code_verifier|device_code|^code$|key$", re.IGNORECASE)
# Bearer tokens and XOAUTH2 strings, and long runs of base64 (SASL payloads, JWTs).
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)
_LONG_B64 = re.compile(r"[A-Za-z0-9+/_\-]{32,}={0,2}(?:\.[A-Za-z0-9_\-]+)*")
# Capitalised words run together, as PowerShell parameters are (-SmtpClientAuthenticationDisabled
# in the fix for SMTP 5.7.139): words, never a secret, and an admin must be able to read them.
_CAMEL_WORDS = re.compile(r"-?(?:[A-Z][a-z]+)+")
# Protocol commands whose arguments are secrets, with an optional IMAP tag in front.
_SECRET_COMMAND = re.compile(
    r"^(?P<head>(?:[^\s]+\s+)?(?:LOGIN|AUTHENTICATE|AUTH|PASS)\b)(?P<args>.*)$", re.IGNORECASE)
_AUTH_MECHANISM = re.compile(r"^(\s+[A-Za-z0-9\-_]+)")


class _Sink:
    """Where lines go: stderr or a file that USR1 reopens (after logrotate moved it)."""

    def __init__(self) -> None:
        self.path: Optional[str] = None
        self.stream: TextIO = sys.stderr
        self.lock = threading.Lock()

    def open(self, path: Optional[str]) -> None:
        with self.lock:
            old, self.path = self.stream, path
            self.stream = open(path, "a", encoding="utf-8", buffering=1) if path else sys.stderr
            if old not in (sys.stderr, self.stream):
                old.close()

    def reopen(self) -> None:
        if self.path:
            self.open(self.path)

    def write(self, line: str) -> None:
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a full disk or closed stderr must never take a session down


_sink = _Sink()
_min_level = LEVELS["info"]


class _SinkLogger:
    def msg(self, message: str) -> None:
        _sink.write(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _mask_b64(match) -> str:
    # Secrets are random: a run of 32 characters mixes upper case, lower case and digits.
    # Paths (state_dir=/tmp/pytest-of-root/...) rarely do, and must stay readable.
    run = match.group(0)
    if _CAMEL_WORDS.fullmatch(run):
        return run
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
    return REDACTED if mixed or not run.startswith("/") else run


def redact_text(text: str) -> str:
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _LONG_B64.sub(_mask_b64, text)


def redact_wire_line(line: str) -> str:
    """Mask the arguments of LOGIN, AUTHENTICATE, AUTH and PASS; keep SASL mechanism names."""
    match = _SECRET_COMMAND.match(line)
    if not match:
        return redact_text(line)
    head, args = match.group("head"), match.group("args")
    if head.split()[-1].upper() in ("AUTHENTICATE", "AUTH"):
        mechanism = _AUTH_MECHANISM.match(args)
        if mechanism:
            head, args = head + mechanism.group(1), args[mechanism.end():]
    return head + (" " + REDACTED if args.strip() else "")


def _redact(_logger, _method, event: dict) -> dict:
    for key, value in list(event.items()):
        if key != "event" and SECRET_KEYS.search(key) and value not in (None, "", False):
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = redact_text(value)
        elif isinstance(value, (bytes, bytearray)):
            event[key] = redact_text(bytes(value).decode("utf-8", "replace"))
    return event


def _add_time_and_level(_logger, method: str, event: dict) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    event["_time"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    event["_level"] = "wire" if event.get("event") == "wire" else method
    return event


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _quote(value) -> str:
    # Control characters from a client (an ESC in a user name) must not reach a terminal raw.
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or _CONTROL.search(text):
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return '"' + _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text) + '"'
    return text


def _render(_logger, _method, event: dict) -> str:
    head = f"{event.pop('_time')} {event.pop('_level'):<7} {event.pop('event', '')}"
    return " ".join([head] + [f"{key}={_quote(value)}" for key, value in event.items() if value is not None])


def configure(level: str = "info", file: Optional[str] = None) -> None:
    """Set up the journal for this process; safe to call again after a reload."""
    global _min_level
    _min_level = LEVELS[level]
    _sink.open(file)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _redact, _add_time_and_level, _render],
        wrapper_class=structlog.make_filtering_bound_logger(max(_min_level, 10)),
        logger_factory=lambda *args: _SinkLogger(),
        cache_logger_on_first_use=False,
    )


def reopen() -> None:
    _sink.reopen()


def get_logger(**context):
    return structlog.get_logger().bind(**context)


def wire_enabled() -> bool:
    return _min_level <= WIRE


def wire(log, direction: str, line: str, redacted: bool = False) -> None:
    """Journal one protocol line at full-debug. `redacted` lines were masked by their protocol."""
    if _min_level <= WIRE:
        text = line if redacted else redact_wire_line(line)
        log.debug("wire", dir=direction, line=text.rstrip("\r\n"))


def b64_secret_fragments(secret: str):
    """What a secret looks like on the wire, so tests can grep a journal for every form of it."""
    raw = secret.encode("utf-8")
    return [secret, base64.b64encode(raw).decode(), base64.b64encode(b"\0" + raw).decode()]
