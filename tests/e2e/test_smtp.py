"""SMTP through a real `oauth-relay serve` to the bed's Postfix, read back from Dovecot.

Legacy programs as clients: smtplib, swaks, curl and msmtp, on the port-25 listener (without
TLS: plaintext AUTH from loopback is allowed by the default policy, and with STARTTLS) and
the port-465 listener (implicit TLS). Every message is compared byte for byte with what
Dovecot stored, below the trace headers Postfix adds, and must arrive exactly once.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import socket

import pytest

from tests.e2e.smtp_support import (DOT_BODY, MODES, RawSmtp, assert_delivered_as_sent, assert_nothing_delivered,
                                    b64, curl, delivered_once, message, msmtp, plain_response, port_of,
                                    smtplib_client, smtplib_login, swaks)

pytestmark = pytest.mark.timeout(120)
ASCII_PASSWORD = 'p a"s\\s %*:'


@pytest.fixture(scope="module")
def sender(relay, bed):
    """The local user most tests send as: SMTP only, with the awkward default password."""
    bed.idp.set_device_flow(interval=1)   # sign-in polls every second (reset after the test)
    return relay.new_user(protocols=["smtp"])


@pytest.fixture(scope="module")
def ascii_sender(relay, sender):
    """The same account for smtplib, whose AUTH encodes credentials as ASCII only."""
    return relay.new_user(protocols=["smtp"], password=ASCII_PASSWORD, account=sender.account, sign_in=False)


# ------------------------------------------------------------------------- AUTH PLAIN and LOGIN

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mechanism,initial", [("PLAIN", True), ("PLAIN", False), ("LOGIN", True),
                                               ("LOGIN", False)])
def test_smtplib_auth_and_send(relay, bed, ascii_sender, mode, mechanism, initial):
    rcpt = bed.new_account("r")
    sent = message(ascii_sender.account, rcpt, DOT_BODY, subject=f"smtplib {mechanism} {mode}".encode())
    with smtplib_client(relay, bed, mode) as client:
        assert smtplib_login(client, ascii_sender, mechanism, initial) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(ascii_sender.account, [rcpt], sent) == {}
        assert client.quit()[0] == 221
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, ascii_sender.account, rcpt)


# ------------------------------------------------------------------------- the other legacy clients

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks(relay, bed, sender, tmp_path, mode, mechanism):
    rcpt = bed.new_account("r")
    # swaks takes a last line "." for the end-of-data dot and adds CRLF "." itself.
    sent = message(sender.account, rcpt, DOT_BODY + b"end\r\n", subject=f"swaks {mechanism} {mode}".encode())
    (tmp_path / "message.eml").write_bytes(sent[:-2])
    result = swaks(relay, bed, mode, sender, mechanism, sender.account, rcpt, tmp_path / "message.eml")
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, output + result.stderr.decode("utf-8", "replace")
    assert re.search(r"^<[-~]  235 2\.7\.0 Authentication successful$", output, re.MULTILINE), output
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, sender.account, rcpt)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mechanism,sasl_ir", [("PLAIN", True), ("LOGIN", False)])
def test_curl(relay, bed, sender, tmp_path, mode, mechanism, sasl_ir):
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, DOT_BODY, subject=f"curl {mechanism} {mode}".encode())
    (tmp_path / "message.eml").write_bytes(sent)
    result = curl(relay, bed, mode, sender, mechanism, sender.account, rcpt, tmp_path / "message.eml", sasl_ir)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, sender.account, rcpt)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_msmtp(relay, bed, sender, tmp_path, mode, mechanism):
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, DOT_BODY, subject=f"msmtp {mechanism} {mode}".encode())
    result = msmtp(relay, bed, mode, sender, mechanism, sender.account, rcpt, sent, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr).decode("utf-8", "replace")
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, sender.account, rcpt)


# ------------------------------------------------------------------------- message content

def test_dot_lines_arrive_unstuffed(relay, bed, ascii_sender):
    """The client stuffs leading dots, Postfix removes them: the relay must touch neither."""
    rcpt = bed.new_account("r")
    body = DOT_BODY + b"..\r\n.\r\n. .\r\n" + b"." * 998 + b"\r\n"
    sent = message(ascii_sender.account, rcpt, body)
    with smtplib_client(relay, bed, "starttls") as client:
        smtplib_login(client, ascii_sender)
        assert client.sendmail(ascii_sender.account, [rcpt], sent) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, ascii_sender.account, rcpt)


def test_utf8_headers_and_body_with_smtputf8(relay, bed, ascii_sender):
    rcpt = bed.new_account("jürgen-ñ")   # a UTF-8 local part: only SMTPUTF8 can carry it
    body = "Grüße aus Köln — 東京 — emoji 📬\r\n.ünicode line with a leading dot\r\n".encode("utf-8")
    sent = message(ascii_sender.account, rcpt, body, subject="Grüße, 東京 📬".encode("utf-8"),
                   headers=["X-Name: Zoë Ünal <zoe@example.test>".encode("utf-8"),
                            b"Content-Type: text/plain; charset=utf-8",
                            b"Content-Transfer-Encoding: 8bit", b"MIME-Version: 1.0"])
    with smtplib_client(relay, bed, "tls") as client:
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        smtplib_login(client, ascii_sender, "LOGIN")
        assert client.sendmail(ascii_sender.account, [rcpt], sent, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, ascii_sender.account, rcpt)


def test_8bit_body_with_8bitmime(relay, bed, ascii_sender):
    """Raw 8-bit bytes that are not UTF-8 (Latin-1, as old ERP systems send) pass untouched."""
    rcpt = bed.new_account("r")
    body = "Rechnung für Müller, 10 € — ½ Preis\r\n".encode("latin-1", "replace") + bytes(range(0x80, 0x100)) + b"\r\n"
    sent = message(ascii_sender.account, rcpt, body, subject="Gr\xfc\xdfe".encode("latin-1"),
                   headers=[b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=iso-8859-1",
                            b"Content-Transfer-Encoding: 8bit"])
    with smtplib_client(relay, bed, "plain") as client:
        smtplib_login(client, ascii_sender)
        assert client.sendmail(ascii_sender.account, [rcpt], sent, mail_options=["BODY=8BITMIME"]) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, ascii_sender.account, rcpt)


def test_30_mb_attachment(relay, bed, ascii_sender):
    rcpt = bed.new_account("r")
    attachment = base64.encodebytes(os.urandom(30 * 1024 * 1024)).replace(b"\n", b"\r\n")
    body = (b"--b0undary\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b0undary\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=big.bin\r\n\r\n"
            + attachment + b"--b0undary--\r\n")
    sent = message(ascii_sender.account, rcpt, body, headers=[b"MIME-Version: 1.0",
                                                        b'Content-Type: multipart/mixed; boundary="b0undary"'])
    with smtplib_client(relay, bed, "starttls", timeout=120) as client:
        assert int(client.esmtp_features["size"]) >= len(sent)
        smtplib_login(client, ascii_sender)
        assert client.sendmail(ascii_sender.account, [rcpt], sent) == {}
    assert_delivered_as_sent(delivered_once(bed, rcpt, timeout=60)[0], sent, ascii_sender.account, rcpt)


def test_several_messages_in_one_session_with_rset(relay, bed, ascii_sender):
    first, second = bed.new_account("r1"), bed.new_account("r2")
    messages = [message(ascii_sender.account, first, b"one\r\n"), message(ascii_sender.account, second, b"two\r\n"),
                message(ascii_sender.account, first, b"three\r\n")]
    with smtplib_client(relay, bed, "tls") as client:
        smtplib_login(client, ascii_sender)
        assert client.sendmail(ascii_sender.account, [first], messages[0]) == {}
        assert client.rset()[0] == 250
        # An abandoned transaction: never delivered.
        assert client.mail(ascii_sender.account)[0] == 250
        assert client.rcpt(second)[0] == 250
        assert client.rset()[0] == 250
        assert client.sendmail(ascii_sender.account, [second], messages[1]) == {}
        assert client.rset()[0] == 250
        assert client.noop()[0] == 250
        assert client.sendmail(ascii_sender.account, [first], messages[2]) == {}
        assert client.quit()[0] == 221
    stored_first = delivered_once(bed, first, 2)
    stored_second = delivered_once(bed, second, 1)
    assert_delivered_as_sent(stored_second[0], messages[1], ascii_sender.account, second)
    by_body = sorted(stored_first, key=lambda stored: stored.endswith(b"three\n"))
    assert_delivered_as_sent(by_body[0], messages[0], ascii_sender.account, first)
    assert_delivered_as_sent(by_body[1], messages[2], ascii_sender.account, first)


def test_bdat_chunks_pass_untouched(relay, bed, sender):
    """CHUNKING, which Postfix offers: no dot-stuffing, chunks split mid-line and mid-CRLF."""
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, DOT_BODY + "8-bit: Grüße\r\n".encode("utf-8") + b"last line\r\n")
    cuts = [0, 7, len(sent) // 2, sent.index(b"\r\n", 200) + 1, len(sent)]
    chunks = [sent[a:b] for a, b in zip(cuts, cuts[1:])]
    with RawSmtp(port_of(relay, "tls"), bed.ssl_context()) as raw:
        _greet(raw)
        assert raw.command(b"AUTH PLAIN " + plain_response(sender))[0] == 235
        assert raw.command(b"MAIL FROM:<" + sender.account.encode() + b"> BODY=8BITMIME")[0] == 250
        assert raw.command(b"RCPT TO:<" + rcpt.encode() + b">")[0] == 250
        for index, chunk in enumerate(chunks):
            last = b" LAST" if index == len(chunks) - 1 else b""
            raw.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
            code, text = raw.reply()
            assert code == 250, text
        assert raw.command(b"QUIT")[0] == 221
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, sender.account, rcpt)


# ------------------------------------------------------------------------- EHLO

def _postfix_extensions(bed) -> list:
    """What the upstream itself offers after STARTTLS, less what the relay answers itself."""
    with smtplib.SMTP(bed.upstream_host, bed.smtp_port, timeout=20) as direct:
        direct.starttls(context=bed.ssl_context())
        code, text = direct.ehlo("legacy.example.test")
        assert code == 250
    lines = text.decode().split("\n")[1:]
    return [line for line in lines if line.split()[0].upper() not in ("AUTH", "STARTTLS")]


def _relay_ehlo(client: smtplib.SMTP) -> list:
    code, text = client.ehlo("legacy.example.test")
    assert code == 250
    return text.decode().split("\n")[1:]


def test_ehlo_advertises_only_what_the_upstream_offers(relay, bed, ascii_sender):
    upstream = _postfix_extensions(bed)
    assert "SIZE 157286400" in upstream and "SMTPUTF8" in upstream
    for mode in MODES:   # first contact on every listener (each has a worker of its own)
        with smtplib_client(relay, bed, mode) as client:
            smtplib_login(client, ascii_sender)
    with smtplib.SMTP("127.0.0.1", port_of(relay, "plain"), timeout=20) as client:
        assert _relay_ehlo(client) == upstream + ["STARTTLS", "AUTH PLAIN LOGIN"]
        client.starttls(context=bed.ssl_context())
        assert _relay_ehlo(client) == upstream + ["AUTH PLAIN LOGIN"]
    with smtplib.SMTP_SSL("127.0.0.1", port_of(relay, "tls"), timeout=20, context=bed.ssl_context()) as client:
        assert _relay_ehlo(client) == upstream + ["AUTH PLAIN LOGIN"]


# ------------------------------------------------------------------------- pipelining

def _greet(raw: RawSmtp) -> None:
    assert raw.reply()[0] == 220
    assert raw.command(b"EHLO legacy.example.test")[0] == 250


@pytest.mark.parametrize("mode,mechanism", [("plain", "PLAIN"), ("tls", "PLAIN"), ("plain", "LOGIN"),
                                            ("tls", "LOGIN")])
def test_bytes_pipelined_after_auth_are_forwarded(relay, bed, sender, mode, mechanism):
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, DOT_BODY.replace(b"\r\n.", b"\r\n.."))   # stuffed by hand
    transaction = (b"MAIL FROM:<" + sender.account.encode() + b">\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
    with RawSmtp(port_of(relay, mode), bed.ssl_context() if mode == "tls" else None) as raw:
        _greet(raw)
        if mechanism == "PLAIN":
            raw.send(b"AUTH PLAIN " + plain_response(sender) + b"\r\n" + transaction)
        else:
            assert raw.command(b"AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")
            assert raw.command(b64(sender.name)) == (334, "334 UGFzc3dvcmQ6")
            raw.send(b64(sender.password) + b"\r\n" + transaction)
        assert raw.reply() == (235, "235 2.7.0 Authentication successful")
        assert raw.reply()[0] == 250   # MAIL
        assert raw.reply()[0] == 250   # RCPT
        assert raw.reply()[0] == 354   # DATA
        assert raw.command(sent + b".")[0] == 250
        assert raw.command(b"QUIT")[0] == 221
        assert raw.rest() == b""
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent.replace(b"\r\n..", b"\r\n."), sender.account, rcpt)


def test_client_that_half_closes_after_quit_gets_every_reply(relay, bed, sender):
    """A script that writes the whole dialogue, shuts its sending side and then reads (the upstream
    leg is TLS: its replies must still reach the plaintext client in clear)."""
    rcpt = bed.new_account("r")
    sent = message(sender.account, rcpt, b"half-closed\r\n")
    with RawSmtp(port_of(relay, "plain")) as raw:
        _greet(raw)
        raw.send(b"AUTH PLAIN " + plain_response(sender) + b"\r\nMAIL FROM:<" + sender.account.encode()
                 + b">\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n" + sent + b".\r\nQUIT\r\n")
        raw.sock.shutdown(socket.SHUT_WR)
        codes = [raw.reply()[0] for _ in range(6)]
        assert codes == [235, 250, 250, 354, 250, 221]
        assert raw.rest() == b""
    assert_delivered_as_sent(delivered_once(bed, rcpt)[0], sent, sender.account, rcpt)


def test_mail_before_auth_and_a_bad_password_send_nothing(relay, bed, sender):
    rcpt = bed.new_account("r")
    with RawSmtp(port_of(relay, "plain")) as raw:
        _greet(raw)
        assert raw.command(b"MAIL FROM:<" + sender.account.encode() + b">") == (503, "503 5.5.1 Authentication required first")
        wrong = base64.b64encode(b"\0" + sender.name.encode() + b"\0wrong")
        assert raw.command(b"AUTH PLAIN " + wrong) == (535, "535 5.7.8 Authentication credentials invalid")
        assert raw.command(b"RCPT TO:<" + rcpt.encode() + b">") == (503, "503 5.5.1 Authentication required first")
        assert raw.command(b"QUIT")[0] == 221
    assert_nothing_delivered(bed, rcpt)


def test_the_journal_holds_no_password(relay, sender, ascii_sender):
    """Full-debug journals every line on the wire: never a password or a PLAIN response."""
    # This test's own logins, so the journal holds them whichever pytest-xdist worker ran the rest.
    for user in (sender, ascii_sender):
        with RawSmtp(port_of(relay, "plain")) as raw:
            _greet(raw)
            assert raw.command(b"AUTH PLAIN " + plain_response(user))[0] == 235
            assert raw.command(b"QUIT")[0] == 221
    journal = relay.journal_text()
    assert f"user={sender.name}" in journal and f"user={ascii_sender.name}" in journal
    for user in (sender, ascii_sender):
        for secret in (user.password, plain_response(user).decode(), b64(user.password).decode()):
            assert secret not in journal
