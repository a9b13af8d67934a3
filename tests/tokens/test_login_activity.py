"""relay.activity: last successful login per user and protocol."""

from __future__ import annotations

import os
import re

from relay import activity

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_record_and_read(tmp_path, monkeypatch):
    monkeypatch.setattr(activity, "_last_written", {})
    state = str(tmp_path)
    activity.record_login(state, "bob", "imap")
    activity.record_login(state, "odd~name/x", "smtp")
    logins = activity.last_logins(state)
    assert set(logins) == {"bob", "odd~name/x"}
    assert ISO.match(logins["bob"]["imap"]) and list(logins["odd~name/x"]) == ["smtp"]


def test_at_most_one_write_per_minute(tmp_path, monkeypatch):
    monkeypatch.setattr(activity, "_last_written", {})
    state = str(tmp_path)
    activity.record_login(state, "bob", "pop3")
    path = os.path.join(state, "activity", os.listdir(os.path.join(state, "activity"))[0])
    os.utime(path, (1, 1))
    for _ in range(50):
        activity.record_login(state, "bob", "pop3")
    assert os.stat(path).st_mtime == 1  # not rewritten
    clock = [0.0]
    monkeypatch.setattr(activity.time, "monotonic", lambda: clock[0] + 1e6)
    activity.record_login(state, "bob", "pop3")
    assert os.stat(path).st_mtime > 1


def test_missing_folder_and_unwritable_state(tmp_path, monkeypatch):
    monkeypatch.setattr(activity, "_last_written", {})
    assert activity.last_logins(str(tmp_path / "none")) == {}
    blocker = tmp_path / "file"
    blocker.write_text("")
    activity.record_login(str(blocker), "bob", "imap")  # must not raise
