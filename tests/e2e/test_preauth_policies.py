"""What a real `oauth-relay serve` answers before a login, by its policies.

One relay of its own, started while Postfix is down, so its SMTP workers' start-up probe
fails and they have never seen Postfix's EHLO; with a 2-second pre-login time limit
(limits.preauth_timeout) and no network allowed to log in without TLS (auth.plaintext_from:
[]), so loopback clients too must use STARTTLS/STLS or the TLS ports first. Apart from the
EHLO test (which starts Postfix again itself), no test here needs Postfix.
"""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from tests.e2e.harness import Relay, wait_for
from tests.e2e.pop3_support import RawPop3, new_user, plain
from tests.e2e.smtp_support import RawSmtp, b64, plain_response, port_of, smtplib_client, smtplib_login
from tests.e2e.test_imap import RawImap, plain_ir, quoted, select_and_logout

pytestmark = pytest.mark.timeout(120)
PREAUTH_TIMEOUT = 2
PASSWORD = "pre-auth pass"        # ASCII: smtplib logs in with it too
# What the relay promises before it has seen the upstream's own EHLO (Office 365's known set).
CONSERVATIVE = ["SIZE 36700160", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
AUTH = "AUTH PLAIN LOGIN"
GREETING = (220, "220 localhost ESMTP OAuth Relay")
GARBAGE_BUDGET = 10               # bad commands before a session is closed (SessionContext)
IMAP_TLS_REQUIRED = "NO [PRIVACYREQUIRED] Login requires an encrypted connection"
POP3_TLS_REQUIRED = b"-ERR [AUTH] TLS required; use STLS first"


@pytest.fixture(scope="module")
def strict(bed, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("preauth"), limits={"preauth_timeout": PREAUTH_TIMEOUT},
                     auth={"plaintext_from": "[]"})
    bed.postfix.stop()     # the bed restarts it after the first test at the latest
    try:
        instance.start()
        # Each SMTP listener's worker probes the upstream once at start: with Postfix down, both fail.
        wait_for(lambda: instance.journal_text().count("upstream_probe_failed") >= 2, 30,
                 "both SMTP workers' start-up probes to fail")
    except BaseException:
        instance.stop()
        if not bed.postfix.running:
            bed.postfix.start()
        raise
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def user(strict):
    return new_user(strict, password=PASSWORD)


def _journal_since(relay, mark: int) -> str:
    return relay.journal_text()[mark:]


# ------------------------------------------------------------------------- SMTP capabilities

def _ehlo(client: smtplib.SMTP) -> list:
    code, text = client.ehlo("legacy.example.test")
    assert code == 250
    return text.decode().split("\n")[1:]


def _relay_ehlo_answers(relay, bed) -> dict:
    """The EHLO extensions on port 25 before and after STARTTLS, and on port 465."""
    with smtplib.SMTP("127.0.0.1", port_of(relay, "plain"), timeout=20) as client:
        plain = _ehlo(client)
        client.starttls(context=bed.ssl_context())
        starttls = _ehlo(client)
    with smtplib.SMTP_SSL("127.0.0.1", port_of(relay, "tls"), timeout=20, context=bed.ssl_context()) as client:
        tls = _ehlo(client)
    return {"plain": plain, "starttls": starttls, "tls": tls}


def _postfix_extensions(bed) -> list:
    """What Postfix itself offers after STARTTLS, less what the relay answers itself."""
    with smtplib.SMTP(bed.upstream_host, bed.smtp_port, timeout=20) as direct:
        direct.starttls(context=bed.ssl_context())
        lines = _ehlo(direct)
    return [line for line in lines if line.split()[0].upper() not in ("AUTH", "STARTTLS")]


def test_ehlo_is_conservative_until_the_upstream_has_been_seen(strict, bed, user):
    try:
        # Postfix is down (or was, when the workers probed it); no SMTP login happened yet.
        assert _relay_ehlo_answers(strict, bed) == {"plain": CONSERVATIVE + ["STARTTLS"],
                                                    "starttls": CONSERVATIVE + [AUTH],
                                                    "tls": CONSERVATIVE + [AUTH]}
    finally:
        if not bed.postfix.running:
            bed.postfix.start()
    upstream = _postfix_extensions(bed)
    assert "SIZE 157286400" in upstream and "SMTPUTF8" in upstream    # unlike the conservative set
    for mode in ("starttls", "tls"):     # one login on each listener (each has a worker of its own)
        with smtplib_client(strict, bed, mode) as client:
            assert smtplib_login(client, user)[0] == 235
    assert _relay_ehlo_answers(strict, bed) == {"plain": upstream + ["STARTTLS"],
                                                "starttls": upstream + [AUTH],
                                                "tls": upstream + [AUTH]}


# ------------------------------------------------------------------------- SMTP pre-auth limits

def test_smtp_client_not_logged_in_is_cut_at_the_time_limit(strict, bed):
    mark = len(strict.journal_text())
    started = time.monotonic()
    with RawSmtp(port_of(strict, "plain"), timeout=PREAUTH_TIMEOUT + 10) as raw:
        assert raw.reply() == GREETING
        # Busy for 1.2 s (a command every 0.4 s), then idle: the limit counts from the connect,
        # not from the last command (an idle limit would end the session at 3.2 s at the earliest).
        for _ in range(3):
            time.sleep(0.4)
            assert raw.command(b"NOOP") == (250, "250 2.0.0 OK")
        assert time.monotonic() - started < PREAUTH_TIMEOUT - 0.3, "too slow to test the limit"
        assert raw.reply() == (421, "421 4.4.2 localhost Timeout, closing")
        elapsed = time.monotonic() - started
        assert raw.rest() == b""
    assert PREAUTH_TIMEOUT - 0.1 <= elapsed < PREAUTH_TIMEOUT + 0.9, elapsed
    assert re.search(r' session_close .*reason="pre-login time limit reached"', _journal_since(strict, mark))


def test_smtp_over_long_line_gets_one_500_and_the_session_goes_on(strict, bed):
    with RawSmtp(port_of(strict, "tls"), bed.ssl_context()) as raw:
        assert raw.reply() == GREETING
        # 100 KB in one line; its tail (past the relay's 8 KB) must not be read as commands.
        raw.send(b"EHLO " + b"x" * 50_000 + b" QUIT " + b"y" * 50_000 + b"\r\n")
        assert raw.reply() == (500, "500 5.5.6 Line too long")
        assert raw.command(b"NOOP") == (250, "250 2.0.0 OK")          # the very next reply
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        assert raw.command(b"AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")
        assert raw.command(b"*") == (501, "501 5.7.0 Authentication cancelled")
        assert raw.command(b"QUIT") == (221, "221 2.0.0 Bye")
        assert raw.rest() == b""


def test_smtp_repeated_bad_commands_get_421_and_close(strict, bed):
    bad = [(b"XYZZY", "500 5.5.2 Command unrecognized"),
           (b"EHLO", "501 5.5.4 Syntax: EHLO hostname"),
           (b"TURN", "502 5.5.1 Command not implemented"),
           (b"MAIL FROM:<someone@example.test>", "530 5.7.0 Must issue a STARTTLS command first"),
           (b"X" * 20_000, "500 5.5.6 Line too long")]
    bad += [(b"XYZZY", "500 5.5.2 Command unrecognized")] * (GARBAGE_BUDGET - len(bad))
    with RawSmtp(port_of(strict, "plain")) as raw:
        assert raw.reply() == GREETING
        for command, reply in bad:
            assert raw.command(command) == (int(reply[:3]), reply)
        assert raw.reply() == (421, "421 4.7.0 Too many errors")
        assert raw.rest() == b""


def test_smtp_auth_cancelled_with_a_star_gets_501(strict, bed):
    with RawSmtp(port_of(strict, "tls"), bed.ssl_context()) as raw:
        assert raw.reply() == GREETING
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        assert raw.command(b"AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")
        assert raw.command(b"*") == (501, "501 5.7.0 Authentication cancelled")
        assert raw.command(b"AUTH LOGIN " + b64("someone")) == (334, "334 UGFzc3dvcmQ6")
        assert raw.command(b"*") == (501, "501 5.7.0 Authentication cancelled")
        assert raw.command(b"AUTH PLAIN") == (334, "334 ")
        assert raw.command(b"*") == (501, "501 5.7.0 Authentication cancelled")
        # Three cancellations are neither failed logins (3 close a session) nor commands.
        assert raw.command(b"NOOP") == (250, "250 2.0.0 OK")
        assert raw.command(b"QUIT") == (221, "221 2.0.0 Bye")


# ------------------------------------------------------------------------- no login without TLS

def test_smtp_without_tls_refuses_auth_until_starttls(strict, bed, user):
    with RawSmtp(port_of(strict, "plain")) as raw:
        assert raw.reply() == GREETING
        code, text = raw.command(b"EHLO legacy.example.test")
        assert code == 250 and "AUTH" not in text and text.endswith("\n250 STARTTLS"), text
        assert raw.command(b"AUTH PLAIN " + plain_response(user)) == (
            530, "530 5.7.0 Must issue a STARTTLS command first")
        assert raw.command(b"STARTTLS") == (220, "220 2.0.0 Ready to start TLS")
        raw.start_tls(bed.ssl_context())
        code, text = raw.command(b"EHLO legacy.example.test")
        assert code == 250 and text.endswith("\n250 " + AUTH), text
        assert raw.command(b"AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")   # accepted now


def test_imap_without_tls_advertises_logindisabled_and_refuses_login(strict, bed, user):
    mark = len(strict.journal_text())
    with RawImap.open(strict, bed, "plain") as client:
        assert client.greeting == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE STARTTLS"
                                   b" LOGINDISABLED] OAuth Relay ready")
        login = b"LOGIN " + quoted(user.name) + b" " + quoted(user.password)
        assert client.command(b"a1", login) == [b"a1 " + IMAP_TLS_REQUIRED.encode()]
        assert client.command(b"a2", b"AUTHENTICATE PLAIN " + plain_ir(user.name, user.password)) == [
            b"a2 " + IMAP_TLS_REQUIRED.encode()]
        # A LOGIN literal is refused before the password is sent: no "+" continuation.
        assert client.command(b"a3", b"LOGIN {%d}" % len(user.name)) == [b"a3 " + IMAP_TLS_REQUIRED.encode()]
        assert client.command(b"S1", b"STARTTLS") == [b"S1 OK Begin TLS negotiation now"]
        client.start_tls(bed.ssl_context())
        assert client.command(b"c1", b"CAPABILITY") == [
            b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN", b"c1 OK CAPABILITY completed"]
        lines = client.command(b"a4", login)
        assert lines[-1].startswith(b"a4 OK"), lines
        select_and_logout(client)
    journal = _journal_since(strict, mark)
    assert journal.count("login_ok") == 1 and "login_refused" not in journal, journal[-3000:]


def test_pop3_without_tls_refuses_credentials_until_stls(strict, bed, user):
    with RawPop3(strict.ports["pop3-starttls"]) as raw:
        assert raw.line() == b"+OK OAuth Relay ready."
        assert raw.command("CAPA") == b"+OK Capability list follows"
        capabilities = raw.multiline().split(b"\r\n")
        assert b"STLS" in capabilities and b"USER" not in capabilities and b"SASL PLAIN" not in capabilities
        assert raw.command("USER " + user.name) == POP3_TLS_REQUIRED
        assert raw.command("PASS " + user.password) == POP3_TLS_REQUIRED
        assert raw.command("AUTH PLAIN " + plain(user.name, user.password)) == POP3_TLS_REQUIRED
        raw.starttls(bed.ssl_context())
        assert raw.command("USER " + user.name) == b"+OK Send your password"
        assert raw.command("PASS " + user.password) == b"+OK Logged in."
        assert raw.command("STAT") == b"+OK 0 0"             # Dovecot's answer: the session is through
        assert raw.command("QUIT").startswith(b"+OK")
