"""Replay every transcript: per-line, byte by byte and coalesced."""

from __future__ import annotations

import pytest
from protocol_transcripts import (
    MODES,
    all_transcripts,
    describe,
    leaked_secrets,
    load,
    observed,
    replay,
    secrets_of,
)

from relay.protocols.base import Trace

PATHS = all_transcripts()
IDS = [path.parent.name + "/" + path.stem for path in PATHS]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_transcript(path, mode):
    transcript = load(path)
    assert observed(transcript, replay(transcript, mode)) == transcript.expected


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_chunking_does_not_change_any_action(path):
    """Traces included: one byte at a time or all at once, the same actions."""
    transcript = load(path)
    reference = describe(replay(transcript, "lines"))
    assert describe(replay(transcript, "bytes")) == reference
    assert describe(replay(transcript, "chunk")) == reference


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_no_trace_shows_a_secret(path):
    transcript = load(path)
    secrets = secrets_of(transcript)
    for mode in MODES:
        for action in replay(transcript, mode):
            if isinstance(action, Trace):
                assert leaked_secrets(action.line, secrets) == [], action.line


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_each_protocol_has_transcripts(protocol):
    assert len([path for path in PATHS if path.parent.name == protocol]) >= 10
