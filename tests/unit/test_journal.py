"""Secrets never reach the journal, whatever the level or the shape they arrive in."""

import base64

import pytest

from relay import journal


@pytest.fixture
def journal_file(tmp_path):
    path = tmp_path / "relay.log"
    journal.configure("full-debug", str(path))
    yield path
    journal.configure("info", None)


def test_secret_fields_and_wire_lines_are_redacted(journal_file):
    password, token = "s3cr3t p@ss", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payloadpayloadpayload.sig"
    sasl = base64.b64encode(f"user=a@b.test\x01auth=Bearer {token}\x01\x01".encode()).decode()
    log = journal.get_logger(session="s1")
    log.info("login", password=password, access_token=token, client_secret="cs-value")
    log.info("upstream_said", answer=f"Bearer {token}")
    for line in (f'a1 LOGIN alice "{password}"', f"a2 AUTHENTICATE PLAIN {sasl}", f"AUTH XOAUTH2 {sasl}",
                 f"AUTH LOGIN {base64.b64encode(b'alice').decode()}", f"PASS {password}", sasl):
        journal.wire(log, "C", line)
    text = journal_file.read_text()
    for secret in (password, token, sasl, "cs-value", *journal.b64_secret_fragments(password)):
        assert secret not in text
    assert "a1 LOGIN <redacted>" in text
    assert "AUTH XOAUTH2 <redacted>" in text
    assert "a2 AUTHENTICATE PLAIN <redacted>" in text


def test_levels_filter(tmp_path):
    path = tmp_path / "quiet.log"
    journal.configure("only-error", str(path))
    log = journal.get_logger()
    log.info("chatty")
    log.warning("careful")
    journal.wire(log, "C", "a1 NOOP")
    log.error("broken", why="disk")
    journal.configure("info", None)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "broken" in lines[0] and "why=disk" in lines[0]


def test_reopen_writes_a_new_file_after_rotation(tmp_path):
    path = tmp_path / "relay.log"
    journal.configure("info", str(path))
    log = journal.get_logger()
    log.info("before")
    path.rename(tmp_path / "relay.log.1")
    journal.reopen()
    log.info("after")
    journal.configure("info", None)
    assert "after" in path.read_text() and "before" not in path.read_text()
    assert "before" in (tmp_path / "relay.log.1").read_text()
