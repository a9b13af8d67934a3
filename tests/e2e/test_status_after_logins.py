"""`oauth-relay status` after real logins through `oauth-relay serve`.

The workers note each local user's last successful login per protocol; the admin's `status`
(another process) shows it next to the account's token state, as a table and as JSON.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import List

import pytest

from tests.e2e.smtp_support import smtplib_client, smtplib_login
from tests.e2e.test_imap import RawImap, quoted, select_and_logout

pytestmark = pytest.mark.timeout(120)
PASSWORD = "Status-pass.42"      # smtplib's AUTH sends ASCII only
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ACCOUNT_HEADER = ["ACCOUNT", "APP", "FLOW", "FIRST OBTAINED", "TOKEN EXPIRES", "REFRESH ROTATED", "STATE"]
USER_HEADER = ["LOCAL USER", "ACCOUNT", "PROTOCOL", "LAST LOGIN"]


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_json(relay) -> dict:
    result = relay.cli("status", "--json")
    data = json.loads(result.stdout)
    healthy = all(row["state"] in ("ok", "refreshing") for row in data["accounts"])
    # Other modules' users share this relay: some of them may need a sign-in on purpose.
    assert result.returncode == (0 if healthy else 1), result.stdout + result.stderr
    return data


def cells(line: str) -> List[str]:
    """A table line's cells: they are padded apart by two spaces or more."""
    return re.split(r" {2,}", line.strip())


def imap_login(relay, bed, user) -> None:
    with RawImap.open(relay, bed, "tls") as client:
        reply = client.command(b"a1", b"LOGIN " + quoted(user.name) + b" " + quoted(user.password))[-1]
        assert reply.startswith(b"a1 OK"), reply
        select_and_logout(client)


def smtp_login(relay, bed, user) -> None:
    with smtplib_client(relay, bed, "tls") as client:
        assert smtplib_login(client, user) == (235, b"2.7.0 Authentication successful")


@pytest.fixture(scope="module")
def user(relay, bed):
    bed.idp.set_device_flow(interval=1)   # sign-in polls every second (reset after the test)
    return relay.new_user(password=PASSWORD)   # all protocols: imap, pop3, smtp


def test_status_shows_the_last_login_per_protocol(relay, bed, user):
    mine = lambda data: [u for u in data["users"] if u["user"] == user.name]
    (before,) = mine(status_json(relay))
    assert before["last_login"] == {}, before  # nothing made up before the first login
    started = utc_now()
    imap_login(relay, bed, user)
    smtp_login(relay, bed, user)
    ended = utc_now()

    data = status_json(relay)
    (entry,) = mine(data)
    assert (entry["account"], entry["app"], entry["protocols"]) == (user.account, "bed", ["imap", "pop3", "smtp"])
    assert set(entry["last_login"]) == {"imap", "smtp"}, entry  # POP3 was never used
    for protocol, stamp in entry["last_login"].items():
        assert ISO.match(stamp) and started <= stamp <= ended, (protocol, stamp, started, ended)
    (account,) = [row for row in data["accounts"] if row["name"] == user.account]
    assert (account["kind"], account["app"], account["flow"], account["state"]) == (
        "account", "bed", "device_code", "ok"), account
    assert account["first_obtained"] and account["access_token_expires"] and account["refresh_token_rotated"]

    text = relay.cli("status").stdout
    lines = text.splitlines()
    assert cells(lines[0]) == ACCOUNT_HEADER, text
    rows = [cells(line) for line in lines if line.startswith(user.account + " ")]
    assert rows == [[user.account, "bed", "device_code", account["first_obtained"],
                     account["access_token_expires"], account["refresh_token_rotated"], "ok"]], text
    headers = [index for index, line in enumerate(lines) if cells(line) == USER_HEADER]
    assert len(headers) == 1 and lines[headers[0] - 1] == "", text  # its own table, below a blank line
    rows = [cells(line) for line in lines[headers[0]:] if line.startswith(user.name + " ")]
    assert rows == [[user.name, user.account, "imap", entry["last_login"]["imap"]],
                    [user.name, user.account, "pop3", "never"],
                    [user.name, user.account, "smtp", entry["last_login"]["smtp"]]], text
