"""Real legacy collectors through a real `oauth-relay serve`: fetchmail and curl.

The issue's "Done when": fetchmail, configured with only the relay's address, a local user and
a local password, downloads a user's mail (from the bed's Dovecot, which only takes XOAUTH2).
"""

import shutil
import subprocess

import pytest

from tests.e2e.harness import AWKWARD_PASSWORD
from tests.e2e.pop3_support import GETMAIL, deliver, dovecot_mailbox, fetched, fetchmail, getmail, message, new_user, unstuff

BODY = "Invoice attached.\n.a dot-led line\n..\nRegards\n"


@pytest.fixture(scope="module", autouse=True)
def _clients_installed():
    """CI installs both (scripts/run-tests): a missing one is a failure, never a skip."""
    missing = [tool for tool in ("fetchmail", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed (apt-get install {' '.join(missing)})", pytrace=False)


@pytest.fixture(scope="module")
def collector(relay, bed):
    """A POP3 user with two messages that these tests keep on the server."""
    user = new_user(relay, protocols=["pop3"])
    deliver(bed, user.account, [message(f"collect {n}", BODY, user.account, user.account) for n in (1, 2)])
    user.stored = [unstuff(body) for body in dovecot_mailbox(bed, user.account)]
    return user


def received(text: bytes) -> bytes:
    """A message fetchmail delivered, without the Received: header it adds."""
    start = text.index(b"\nReceived: from localhost [127.0.0.1]\n") + 1
    end = text.index(b"\nReceived: ", start) + 1  # then Postfix's own
    assert b"with POP3 (fetchmail" in text[start:end]
    return text[:start] + text[end:]


# ------------------------------------------------------------------ fetchmail

def test_fetchmail_downloads_a_users_mail(relay, bed, tmp_path):
    """Done when: only the relay's address, a local user and a local password (995-style)."""
    user = new_user(relay, protocols=["pop3"])
    deliver(bed, user.account, [message(f"done-when {n}", BODY, user.account, user.account) for n in (1, 2, 3)])
    stored = sorted(bed.dovecot.messages(user.account))
    run = fetchmail(tmp_path, relay.ports["pop3-tls"], user.name, user.password, "tls", bed.ca_file, keep=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 messages" in run.stdout + run.stderr
    assert sorted(received(m) for m in fetched(tmp_path)) == stored
    # fetchmail deleted what it fetched: Dovecot's mailbox is empty now.
    assert bed.dovecot.messages(user.account) == []
    again = fetchmail(tmp_path, relay.ports["pop3-tls"], user.name, user.password, "tls", bed.ca_file)
    assert again.returncode == 1, again.stdout + again.stderr  # 1: no mail
    assert len(fetched(tmp_path)) == 3


@pytest.mark.parametrize("mode", ["stls", "plain"])
def test_fetchmail_on_110_style(relay, bed, collector, tmp_path, mode):
    run = fetchmail(tmp_path, relay.ports["pop3-starttls"], collector.name, collector.password, mode, bed.ca_file)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert ("POP3> STLS" in output) == (mode == "stls"), output
    assert sorted(received(m) for m in fetched(tmp_path)) == sorted(collector.stored)
    assert len(bed.dovecot.messages(collector.account)) == 2  # keep


def test_fetchmail_with_a_wrong_password_reports_an_auth_error(relay, bed, collector, tmp_path):
    run = fetchmail(tmp_path, relay.ports["pop3-tls"], collector.name, "wrong", "tls", bed.ca_file)
    assert run.returncode == 3, run.stdout + run.stderr  # 3: authentication failed
    assert "[AUTH]" in run.stdout + run.stderr
    assert fetched(tmp_path) == []


# ------------------------------------------------------------------ curl

def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "60", "--noproxy", "*", *args],
                          capture_output=True, timeout=90)


def test_curl_lists_on_110_without_tls(relay, collector):
    run = curl("-u", f"{collector.name}:{collector.password}", f"pop3://127.0.0.1:{relay.ports['pop3-starttls']}/")
    assert run.returncode == 0, run.stderr
    sizes = [len(m.replace(b"\n", b"\r\n")) for m in collector.stored]
    assert run.stdout == b"".join(b"%d %d\r\n" % (n, size) for n, size in enumerate(sizes, 1))


def test_curl_retr_on_110_with_stls_required(relay, bed, collector):
    run = curl("--ssl-reqd", "--cacert", bed.ca_file, "-v", "-u", f"{collector.name}:{collector.password}",
               f"pop3://127.0.0.1:{relay.ports['pop3-starttls']}/2")
    assert run.returncode == 0, run.stderr
    assert b"STLS" in run.stderr
    assert run.stdout == collector.stored[1].replace(b"\n", b"\r\n")  # curl un-stuffs the dots


def test_curl_pop3s_retr_and_uidl(relay, bed, collector):
    base = f"pop3s://127.0.0.1:{relay.ports['pop3-tls']}"
    credentials = f"{collector.name}:{collector.password}"
    run = curl("--cacert", bed.ca_file, "-u", credentials, base + "/1")
    assert run.returncode == 0, run.stderr
    assert run.stdout == collector.stored[0].replace(b"\n", b"\r\n")
    run = curl("--cacert", bed.ca_file, "-u", credentials, "-X", "UIDL", base + "/")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2


def test_curl_refuses_a_relay_it_cannot_verify(relay, collector):
    run = curl("-u", f"{collector.name}:{collector.password}", f"pop3s://127.0.0.1:{relay.ports['pop3-tls']}/")
    assert run.returncode == 60, run.stderr  # the bed CA is not trusted by default


def test_curl_wrong_password(relay, bed, collector):
    run = curl("--cacert", bed.ca_file, "-u", f"{collector.name}:x{AWKWARD_PASSWORD}",
               f"pop3s://127.0.0.1:{relay.ports['pop3-tls']}/")
    assert run.returncode == 67, run.stderr  # CURLE_LOGIN_DENIED


# ------------------------------------------------------------------ getmail6

@pytest.mark.skipif(not GETMAIL, reason="getmail6 is a test extra (pip)")
@pytest.mark.parametrize("tls", [True, False], ids=["995", "110"])
def test_getmail_downloads_mail(relay, bed, collector, tmp_path, tls):
    port = relay.ports["pop3-tls" if tls else "pop3-starttls"]
    run = getmail(tmp_path, port, collector.name, collector.password, tls, bed.ca_file)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 messages" in run.stdout + run.stderr, run.stdout + run.stderr
    assert sorted(fetched(tmp_path)) == sorted(collector.stored)
