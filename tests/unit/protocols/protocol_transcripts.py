"""Load and replay protocol transcripts (format: transcripts/README.md)."""

from __future__ import annotations

import base64
import binascii
import codecs
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Tuple

from relay.protocols import MACHINES
from relay.protocols.base import (
    Action,
    Close,
    Failure,
    Login,
    LoginResult,
    Pipe,
    Send,
    SessionContext,
    StartTLS,
    Trace,
)

TRANSCRIPTS = Path(__file__).parent / "transcripts"
MODES = ("lines", "bytes", "chunk")

_CONTEXT_DEFAULTS = dict(tls_active=False, starttls_offered=True, plaintext_auth_allowed=True)


@dataclass
class Transcript:
    name: str
    ctx: SessionContext
    steps: List[Tuple[str, object]] = field(default_factory=list)  # (kind, payload)
    expected: List[str] = field(default_factory=list)
    traces_checked: bool = False
    secrets: List[str] = field(default_factory=list)


def all_transcripts() -> List[Path]:
    return sorted(TRANSCRIPTS.glob("*/*.txt"))


def unescape(text: str) -> bytes:
    """`\\r`, `\\n`, `\\xNN`, `\\\\` ... to bytes; other characters as UTF-8."""
    return codecs.escape_decode(text.encode("utf-8"))[0]


def escape(data: bytes) -> str:
    """A canonical printable form of bytes, for comparing Pipe.pending."""
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append({0x0D: "\\r", 0x0A: "\\n"}.get(byte, "\\x%02x" % byte))
    return "".join(out)


def load(path: Path) -> Transcript:
    settings: Dict[str, str] = {}
    transcript = Transcript(path.parent.name + "/" + path.stem, ctx=None)  # type: ignore[arg-type]
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("@ "):
            key, _, value = raw[2:].partition(":")
            if key.strip() == "secret":
                transcript.secrets.append(value[1:])  # inner spaces are part of it
            else:
                settings[key.strip()] = value.strip()
        elif raw and not raw.startswith("#"):
            _read_step(transcript, raw)
    transcript.ctx = _context(path.parent.name, settings)
    transcript.traces_checked = settings.get("traces") == "checked"
    return transcript


def _read_step(transcript: Transcript, raw: str) -> None:
    kind, text = raw[:2], raw[3:]
    if kind == "C:":
        transcript.steps.append(("client", text.encode("utf-8") + b"\r\n"))
    elif kind == "C~":
        transcript.steps.append(("client", unescape(text)))
    elif kind == "R:":
        transcript.steps.append(("result", _login_result(text)))
    elif kind == "E:":
        transcript.steps.append(("event", text.strip()))
    elif kind in ("S:", "A:"):
        transcript.expected.append(_canonical_expectation(raw))
    else:
        raise ValueError("%s: cannot read line %r" % (transcript.name, raw))


def _context(protocol: str, settings: Dict[str, str]) -> SessionContext:
    ctx = SessionContext(protocol=protocol, **_CONTEXT_DEFAULTS)  # type: ignore[arg-type]
    changes: Dict[str, object] = {}
    for key, value in settings.items():
        if key in ("tls_active", "starttls_offered", "plaintext_auth_allowed"):
            changes[key] = value == "yes"
        elif key in ("max_line", "max_literal", "garbage_budget", "max_failed_logins"):
            changes[key] = int(value)
        elif key == "hostname":
            changes[key] = value
        elif key == "upstream_capabilities":
            changes[key] = tuple(part.strip() for part in value.split("|") if part.strip())
    return replace(ctx, **changes)


def _login_result(text: str) -> LoginResult:
    """`ok [caps=A B]` or `<failure> [text=...]`."""
    word, _, rest = text.strip().partition(" ")
    if word == "ok":
        caps = tuple(rest[len("caps="):].split()) if rest.startswith("caps=") else ()
        return LoginResult(True, capabilities=caps)
    detail = rest[len("text="):] if rest.startswith("text=") else ""
    return LoginResult(False, Failure(word), text=detail)


def _canonical_expectation(raw: str) -> str:
    if raw.startswith("A: Pipe pending="):
        return "A: Pipe pending=" + escape(unescape(raw[len("A: Pipe pending="):]))
    return raw


def describe(actions: List[Action]) -> List[str]:
    """Actions as transcript lines; Sends split into one line each."""
    lines = []
    for action in actions:
        if isinstance(action, Send):
            assert action.data.endswith(b"\r\n"), action
            lines += ["S: " + line.decode("utf-8") for line in action.data[:-2].split(b"\r\n")]
        elif isinstance(action, Login):
            lines.append("A: Login user=%s password=%s" % (action.username, action.password))
        elif isinstance(action, Pipe):
            lines.append("A: Pipe pending=" + escape(action.pending))
        elif isinstance(action, StartTLS):
            lines.append("A: StartTLS")
        elif isinstance(action, Close):
            lines.append("A: Close")
        elif isinstance(action, Trace):
            lines.append("A: Trace " + action.line)
    return lines


def replay(transcript: Transcript, mode: str) -> List[Action]:
    """Drive a fresh machine through the transcript; return every action."""
    machine = MACHINES[transcript.ctx.protocol](transcript.ctx)
    actions = list(machine.greeting())
    for kind, payload in _chunked(transcript.steps, mode):
        if kind == "client":
            actions += machine.receive(payload)  # type: ignore[arg-type]
        elif kind == "result":
            actions += machine.login_result(payload)  # type: ignore[arg-type]
        else:
            actions += _event(machine, str(payload))
    return actions


def _event(machine, name: str) -> List[Action]:
    events = {
        "tls": machine.tls_started,
        "timeout": machine.timed_out,
        "lost": machine.connection_lost,
        "shutdown": machine.shutting_down,
    }
    return events[name]()


def _chunked(steps: List[Tuple[str, object]], mode: str) -> List[Tuple[str, object]]:
    """Regroup client bytes: as written ("lines"), one byte per receive ("bytes"),
    all between two events at once ("chunk"), or cut at random ("random:SEED")."""
    if mode == "lines":
        return steps
    if mode.startswith("random:"):
        return _random_cuts(_chunked(steps, "chunk"), random.Random(mode))
    if mode == "bytes":
        return [
            ("client", payload[index : index + 1]) if kind == "client" else (kind, payload)
            for kind, payload in steps
            for index in range(len(payload) if kind == "client" else 1)  # type: ignore[arg-type]
        ]
    merged: List[Tuple[str, object]] = []
    for kind, payload in steps:
        if kind == "client" and merged and merged[-1][0] == "client":
            merged[-1] = ("client", merged[-1][1] + payload)  # type: ignore[operator]
        else:
            merged.append((kind, payload))
    return merged


Steps = List[Tuple[str, object]]


def _random_cuts(steps: Steps, generator: random.Random) -> Steps:
    cut: Steps = []
    for kind, payload in steps:
        if kind != "client":
            cut.append((kind, payload))
            continue
        data = bytes(payload)  # type: ignore[call-overload]
        while data:
            size = generator.randint(1, 9)
            cut.append(("client", data[:size]))
            data = data[size:]
    return cut


def observed(transcript: Transcript, actions: List[Action]) -> List[str]:
    lines = describe(actions)
    if transcript.traces_checked:
        return lines
    return [line for line in lines if not line.startswith("A: Trace ")]


def secrets_of(transcript: Transcript) -> List[str]:
    """Passwords the transcript expects in Login actions, plus `@ secret:` lines."""
    found = list(transcript.secrets)
    for line in transcript.expected:
        if line.startswith("A: Login "):
            found.append(line.split(" password=", 1)[1])
    return [secret for secret in found if secret]


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def leaked_secrets(trace: str, secrets: List[str]) -> List[str]:
    """Secrets visible in a trace line, as text or inside a base64 token.

    One- and two-character secrets are skipped: they match by chance.
    """
    secrets = [secret for secret in secrets if len(secret) >= 3]
    leaked = [secret for secret in secrets if secret in trace]
    for token in _BASE64_TOKEN.findall(trace):
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            continue
        leaked += [secret for secret in secrets if secret.encode("utf-8") in decoded]
    return leaked
