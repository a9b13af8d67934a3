"""relay/upstream/smtp.py and the login retry against a tiny fake Office 365 on loopback.

Postfix cannot answer `535 5.7.139` (SMTP AUTH switched off for the tenant or mailbox), so the
fake server does: EHLO, STARTTLS (real TLS, a throw-away CA), EHLO, AUTH XOAUTH2, then the
scripted answer. The token must not be refreshed for 5.7.139, and must be refreshed exactly
once for a plain 535.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from types import SimpleNamespace
from typing import List, Optional

import pytest
import trustme

from relay import journal
from relay.upstream.errors import SmtpAuthDisabled, TokenRefused, UpstreamError
from relay.upstream.login import open_upstream
from relay.upstream.smtp import MAX_COMMAND_LINE

O365_AUTH_DISABLED = ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
                      "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [AM0PR01CA0001]")
O365_BAD_TOKEN = "535 5.7.3 Authentication unsuccessful [AM0PR01CA0002]"
SHORT_TOKEN, LONG_TOKEN = "t" * 40, "T" * 1400   # one-line AUTH, and the two-step form


class FakeOffice365:
    """Serves one scripted AUTH answer per connection, in order; records what it was sent."""

    def __init__(self, answers: List[str], ca: trustme.CA):
        self.answers = list(answers)
        self.connections = 0
        self.auth_lines: List[str] = []     # the AUTH command line of each connection
        self.sasl: List[str] = []           # the decoded XOAUTH2 string of each connection
        self.errors: List[BaseException] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answer in self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                self._session(conn, answer)
            except BaseException as exc:  # reported by close()
                self.errors.append(exc)
            finally:
                conn.close()

    def _session(self, conn: socket.socket, answer: str) -> None:
        conn.settimeout(10)
        reader = conn.makefile("rb")

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        def expect(prefix: str) -> str:
            line = reader.readline(4096).decode().rstrip("\r\n")
            assert line.upper().startswith(prefix), f"expected {prefix!r}, got {line!r}"
            return line

        send("220 fake.outlook.test Microsoft ESMTP MAIL Service ready")
        expect("EHLO ")
        send("250-fake.outlook.test Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SMTPUTF8")
        expect("STARTTLS")
        send("220 2.0.0 SMTP server ready")
        reader.close()
        conn = self.context.wrap_socket(conn, server_side=True)
        reader = conn.makefile("rb")
        expect("EHLO ")
        send("250-fake.outlook.test Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-AUTH LOGIN XOAUTH2\r\n"
             "250-8BITMIME\r\n250 SMTPUTF8")
        line = expect("AUTH XOAUTH2")
        self.auth_lines.append(line)
        initial = line[len("AUTH XOAUTH2"):].strip()
        if not initial:
            send("334 ")
            initial = reader.readline(65536).decode().strip()
        self.sasl.append(base64.b64decode(initial).decode())
        send(answer)
        if answer.startswith("235"):
            expect("QUIT")
        reader.close()
        conn.close()

    def close(self) -> int:
        """Stop; return how many connections came beyond the script (none, in every test)."""
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.listener.settimeout(0.2)
        extra = 0
        for _ in range(3):
            try:
                self.listener.accept()[0].close()
                extra += 1
            except OSError:
                break
        self.listener.close()
        if self.errors:
            raise self.errors[0]
        return extra


class Tokens:
    """A token service stand-in that counts what it is asked for."""

    def __init__(self, token: str):
        self.token = token
        self.calls: List[bool] = []   # force_refresh of each call

    def access_token(self, account: str, app: str, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return self.token + ("-refreshed" if force_refresh else "")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _login(server: FakeOffice365, ca: trustme.CA, tokens: Tokens, mailbox: Optional[str] = None):
    endpoint = SimpleNamespace(host="127.0.0.1", port=server.port, security="starttls")
    config = SimpleNamespace(
        upstream=SimpleNamespace(for_protocol=lambda protocol: endpoint, connect_timeout=5, login_timeout=5),
        hostname="relay.example.test")
    user = SimpleNamespace(name="scanner", account="owner@example.test", app="default",
                           target_mailbox=mailbox or "owner@example.test")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return open_upstream("smtp", config, user, tokens, context, journal.get_logger(test="upstream-smtp"))


@pytest.mark.parametrize("token", [SHORT_TOKEN, LONG_TOKEN], ids=["one-line", "two-step"])
def test_535_5_7_139_is_smtp_auth_disabled_and_the_token_is_not_refreshed(ca, token):
    server = FakeOffice365([O365_AUTH_DISABLED], ca)
    tokens = Tokens(token)
    with pytest.raises(SmtpAuthDisabled) as raised:
        _login(server, ca, tokens)
    assert server.close() == 0          # no second attempt
    assert raised.value.answer == O365_AUTH_DISABLED
    assert "Set-CASMailbox" in raised.value.admin_fix and "-SmtpClientAuthenticationDisabled $false" in \
        raised.value.admin_fix
    assert tokens.calls == [False]      # one token, never a refresh
    assert server.connections == 1


@pytest.mark.parametrize("token", [SHORT_TOKEN, LONG_TOKEN], ids=["one-line", "two-step"])
def test_a_refused_token_is_refreshed_once_then_the_login_succeeds(ca, token):
    server = FakeOffice365([O365_BAD_TOKEN, "235 2.7.0 Authentication successful"], ca)
    tokens = Tokens(token)
    conn, capabilities = _login(server, ca, tokens, mailbox="shared@example.test")
    conn.send_line(b"QUIT")
    conn.close()
    assert server.close() == 0
    assert tokens.calls == [False, True]
    assert server.connections == 2
    assert capabilities == ("SIZE 157286400", "PIPELINING", "AUTH LOGIN XOAUTH2", "8BITMIME", "SMTPUTF8")
    # SMTP always authenticates as the token owner, also for a user with a shared mailbox.
    assert server.sasl == [f"user=owner@example.test\x01auth=Bearer {token}\x01\x01",
                           f"user=owner@example.test\x01auth=Bearer {token}-refreshed\x01\x01"]
    for line in server.auth_lines:   # the initial response only where the line stays short
        assert (line == "AUTH XOAUTH2") == (len(token) > MAX_COMMAND_LINE)
        assert len(line) + 2 <= 512


def test_a_token_refused_twice_gives_up_after_one_refresh(ca):
    server = FakeOffice365([O365_BAD_TOKEN, O365_BAD_TOKEN], ca)
    tokens = Tokens(LONG_TOKEN)
    with pytest.raises(UpstreamError) as raised:
        _login(server, ca, tokens)
    assert server.close() == 0
    assert raised.value.answer == O365_BAD_TOKEN
    assert tokens.calls == [False, True]
    assert server.connections == 2


def test_a_temporary_answer_is_not_a_token_problem(ca):
    server = FakeOffice365(["454 4.7.0 Temporary authentication failure [AM0PR01CA0003]"], ca)
    tokens = Tokens(SHORT_TOKEN)
    with pytest.raises(UpstreamError) as raised:
        _login(server, ca, tokens)
    assert server.close() == 0
    assert not isinstance(raised.value, (TokenRefused, SmtpAuthDisabled))
    assert tokens.calls == [False]


def test_the_admin_fix_stays_readable_in_the_journal():
    """The journal masks long base64-like runs; the PowerShell parameter of the fix is words."""
    text = journal.redact_text(f"fix={SmtpAuthDisabled.admin_fix!r}")
    assert "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false" in text
    assert "Set-TransportConfig -SmtpClientAuthenticationDisabled $false" in text
    secret = base64.b64encode(b"\x8f\x01 random token bytes \xfe\x17" * 2).decode()
    assert journal.redact_text(f"x={secret}") == "x=<redacted>"
