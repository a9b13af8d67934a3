"""IMAP through a second real `oauth-relay serve` whose upstream is a small fake Office 365 IMAP.

For what the bed's Dovecot does not do: answer AUTHENTICATE with Office 365's "come back
later" (`NO [UNAVAILABLE] Server is busy`), or never answer it. Neither is a token problem,
so the relay tries once, refreshes nothing and tells the client to try later; a silent
upstream is given up after `upstream.login_timeout`, which this relay has short.
"""

import re
import time

import pytest

from tests.e2e.fake_upstream import ImplicitTlsFake, serve_only
from tests.e2e.harness import Relay
from tests.e2e.test_imap import RawImap, quoted

LOGIN_TIMEOUT = 3
PASSWORD = "secret pass"
TRY_LATER = b"a1 NO [UNAVAILABLE] Office 365 is unavailable right now; try again later."
BUSY = b"NO [UNAVAILABLE] Server is busy. Try again later."


class FakeOffice365Imap(ImplicitTlsFake):
    """Implicit-TLS IMAP server: greeting, CAPABILITY, AUTHENTICATE XOAUTH2 with SASL-IR (answer
    chosen by the mailbox's local part), LOGOUT. Counts AUTHENTICATE attempts per mailbox."""

    CAPABILITIES = (b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT "
                    b"CHILDREN IDLE NAMESPACE LITERAL+")

    def _dialogue(self, conn, lines) -> None:
        conn.sendall(b"* OK The Microsoft Exchange IMAP4 service is ready. [fake]\r\n")
        for _ in range(100):
            line = lines.readline(65536).rstrip(b"\r\n")
            if not line:
                return
            tag, _, command = line.partition(b" ")
            verb = command.split(b" ")[0].upper()
            if verb == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY " + self.CAPABILITIES + b"\r\n" + tag + b" OK CAPABILITY completed.\r\n")
            elif command.upper().startswith(b"AUTHENTICATE XOAUTH2 "):
                self._authenticate(conn, tag, command.split(b" ")[2])
            elif verb == b"LOGOUT":
                conn.sendall(b"* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n"
                             + tag + b" OK LOGOUT completed.\r\n")
                return
            else:
                conn.sendall(tag + b" BAD Command Error. 12\r\n")

    def _authenticate(self, conn, tag: bytes, answer: bytes) -> None:
        mailbox = self._count_login(answer)
        kind = mailbox.split("-")[0]
        if kind == "busy":
            conn.sendall(tag + b" " + BUSY + b"\r\n")
        elif kind == "silent":
            self.closing.wait(LOGIN_TIMEOUT + 5)
        else:
            conn.sendall(tag + b" OK AUTHENTICATE completed.\r\n")


@pytest.fixture(scope="module")
def fake(bed, tmp_path_factory):
    server = FakeOffice365Imap(bed, str(tmp_path_factory.mktemp("fake-o365-imap")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def fake_relay(bed, fake, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("relay-fake-imap"))
    # Only the IMAP listeners: two workers start faster than six.
    serve_only(instance, "imap", {
        f"  imap: {{host: {bed.upstream_host}, port: {bed.imaps_port}, security: tls}}\n":
            f"  imap: {{host: 127.0.0.1, port: {fake.port}, security: tls}}\n",
        "  login_timeout: 15\n": f"  login_timeout: {LOGIN_TIMEOUT}\n"})
    instance.start()
    bed.idp.set_device_flow(interval=1)
    instance.owner = bed.new_account()
    instance.sign_in(instance.owner)
    yield instance
    instance.stop()


def local_user(relay, kind: str):
    """A local user whose (shared) mailbox tells the fake server how to answer."""
    name = f"{kind}-{time.monotonic_ns()}"
    relay.add_user(name, PASSWORD, relay.owner, mailbox=f"{name}@example.test", protocols=["imap"])
    return name, f"{name}@example.test"


def login(relay, bed, name: str) -> bytes:
    with RawImap(relay.ports["imap-tls"], bed.ssl_context(), timeout=LOGIN_TIMEOUT + 15) as raw:
        assert raw.line().startswith(b"* OK")
        reply = raw.command(b"a1", b"LOGIN " + quoted(name) + b" " + quoted(PASSWORD))[-1]
        if reply.startswith(b"a1 OK"):
            assert raw.command(b"a2", b"LOGOUT")[-1] == b"a2 OK LOGOUT completed."
        return reply


def session_journal(relay, mark: int, name: str) -> str:
    return "\n".join(line for line in relay.journal_text()[mark:].splitlines() if f"user={name} " in line)


def test_busy_upstream_means_try_later_without_a_refresh(fake_relay, bed, fake):
    name, mailbox = local_user(fake_relay, "busy")
    mark = len(fake_relay.journal_text())
    bed.idp.reset_counts()
    assert login(fake_relay, bed, name) == TRY_LATER
    assert fake.attempts[mailbox] == 1   # "busy" is no reason to refresh the token and retry
    assert not bed.idp.counts().get("token:refresh_token")
    journal = session_journal(fake_relay, mark, name)
    assert re.search(r"login_upstream_failed .*reason=.?the IMAP server refused XOAUTH2 for %s.? "
                     r"answer=.?R3 %s" % (re.escape(mailbox), re.escape(BUSY.decode())), journal), journal
    assert "upstream_refused_token" not in journal


def test_upstream_that_never_answers_the_login_times_out(fake_relay, bed, fake):
    name, mailbox = local_user(fake_relay, "silent")
    mark = len(fake_relay.journal_text())
    bed.idp.reset_counts()
    started = time.monotonic()
    assert login(fake_relay, bed, name) == TRY_LATER
    assert LOGIN_TIMEOUT - 0.5 < time.monotonic() - started < LOGIN_TIMEOUT + 3
    assert fake.attempts[mailbox] == 1
    assert not bed.idp.counts().get("token:refresh_token")
    journal = session_journal(fake_relay, mark, name)
    assert re.search(r"login_upstream_failed .*reason=.?127\.0\.0\.1:%d did not answer in time" % fake.port,
                     journal), journal


def test_accepting_upstream_logs_in(fake_relay, bed, fake):
    """The fake's ordinary answer: the cases above fail because of their answer, nothing else."""
    name, mailbox = local_user(fake_relay, "ok")
    assert login(fake_relay, bed, name).startswith(b"a1 OK ")
    assert fake.attempts[mailbox] == 1
