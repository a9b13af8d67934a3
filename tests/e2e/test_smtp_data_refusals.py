"""A message Office 365 refuses only after its body (content filter, policy): the 4xx or 5xx at
the end of DATA reaches the legacy program unchanged, never a 250, and nothing is delivered.

The bed's Postfix refuses, in smtpd_end_of_data_restrictions, a recipient whose local part
starts with reject-eod- (554 5.7.1) or tempfail-eod- (451 4.3.0); see tests/bed/postfix.py.
"""

from __future__ import annotations

import re
import smtplib
import uuid

import pytest

from tests.bed.postfix import REJECT_EOD_PREFIX, REJECT_EOD_TEXT, TEMPFAIL_EOD_PREFIX, TEMPFAIL_EOD_TEXT
from tests.e2e.smtp_support import (MODES, RawSmtp, assert_delivered_as_sent, assert_nothing_delivered,
                                    delivered_once, message, plain_response, port_of, smtplib_client,
                                    smtplib_login, swaks)

pytestmark = pytest.mark.timeout(120)

KINDS = {"reject": (REJECT_EOD_PREFIX, 554, REJECT_EOD_TEXT),
         "tempfail": (TEMPFAIL_EOD_PREFIX, 451, TEMPFAIL_EOD_TEXT)}
BODY = b"A body Office 365 reads to the end and then refuses.\r\n" * 40


@pytest.fixture(scope="module")
def sender(relay, bed):
    bed.idp.set_device_flow(interval=1)   # sign-in polls every second (reset after the test)
    return relay.new_user(protocols=["smtp"], password="Eod-pass_42.x")


def refused_recipient(kind: str) -> str:
    return f"{KINDS[kind][0]}{uuid.uuid4().hex[:12]}@example.test"


def expected_reply(kind: str, rcpt: str):
    """Postfix's end-of-data refusal, as smtplib reports it: (code, text without the code)."""
    _, code, text = KINDS[kind]
    enhanced, _, words = text.partition(" ")
    return code, f"{enhanced} <{rcpt}>: Recipient address rejected: {words}".encode()


def postfix_says(bed, account: str, rcpt: str, sent: bytes):
    """What Postfix itself answers the end of DATA, straight and without the relay."""
    with bed.smtp_login(account, bed.token_for(account)) as direct:
        assert direct.mail(account)[0] == 250
        assert direct.rcpt(rcpt)[0] == 250   # accepted at RCPT: refused only after the body
        return direct.data(sent)


@pytest.mark.parametrize("kind", KINDS)
def test_postfix_refuses_only_at_the_end_of_data(bed, kind):
    """The bed itself: the refusal comes after the body, with the configured code and text."""
    account, rcpt = bed.new_account("s"), refused_recipient(kind)
    assert postfix_says(bed, account, rcpt, message(account, rcpt, BODY)) == expected_reply(kind, rcpt)
    assert_nothing_delivered(bed, rcpt)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_smtplib_gets_the_end_of_data_refusal_unchanged(relay, bed, sender, kind, mode):
    rcpt, good = refused_recipient(kind), bed.new_account("r")
    sent = message(sender.account, rcpt, BODY, subject=f"eod {kind} {mode}".encode())
    with smtplib_client(relay, bed, mode) as client:
        assert smtplib_login(client, sender)[0] == 235
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(sender.account, [rcpt], sent)
        assert (refused.value.smtp_code, refused.value.smtp_error) == expected_reply(kind, rcpt)
        # The session is still in step: the next message in it goes out (smtplib sent RSET).
        follow_up = message(sender.account, good, b"the next message in the same session\r\n")
        assert client.sendmail(sender.account, [good], follow_up) == {}
        assert client.quit()[0] == 221
    assert_delivered_as_sent(delivered_once(bed, good)[0], follow_up, sender.account, good)
    assert_nothing_delivered(bed, rcpt)


@pytest.mark.parametrize("transfer", ["DATA", "BDAT"])
@pytest.mark.parametrize("kind", KINDS)
def test_raw_client_gets_exactly_one_reply_after_the_body(relay, bed, sender, kind, transfer):
    """Byte level: after "." (or BDAT ... LAST) the only reply is Postfix's refusal, no 250."""
    rcpt = refused_recipient(kind)
    sent = message(sender.account, rcpt, BODY)
    code, text = expected_reply(kind, rcpt)
    with RawSmtp(port_of(relay, "tls"), bed.ssl_context()) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        assert raw.command(b"AUTH PLAIN " + plain_response(sender))[0] == 235
        assert raw.command(b"MAIL FROM:<" + sender.account.encode() + b">")[0] == 250
        assert raw.command(b"RCPT TO:<" + rcpt.encode() + b">")[0] == 250
        if transfer == "DATA":
            assert raw.command(b"DATA")[0] == 354
            raw.send(sent + b".\r\n")
        else:
            half = len(sent) // 2
            raw.send(b"BDAT %d\r\n" % half + sent[:half])
            assert raw.reply() == (250, f"250 2.0.0 Ok: {half} bytes")
            raw.send(b"BDAT %d LAST\r\n" % (len(sent) - half) + sent[half:])
        assert raw.reply() == (code, f"{code} {text.decode()}")
        assert raw.command(b"QUIT")[0] == 221
        assert raw.rest() == b""
    assert_nothing_delivered(bed, rcpt)


@pytest.mark.parametrize("mode", ["plain", "tls"])
@pytest.mark.parametrize("kind", KINDS)
def test_swaks_gets_the_end_of_data_refusal_unchanged(relay, bed, sender, tmp_path, kind, mode):
    rcpt = refused_recipient(kind)
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(message(sender.account, rcpt, BODY))
    result = swaks(relay, bed, mode, sender, "PLAIN", sender.account, rcpt, data_file)
    output = result.stdout.decode("utf-8", "replace")
    # 26: "server didn't accept mail following data"
    assert result.returncode == 26, output + result.stderr.decode("utf-8", "replace")
    code, text = expected_reply(kind, rcpt)
    # swaks shows a server's reply as "<-" ("<~" under TLS), an error reply as "<**" ("<~*").
    replies = re.findall(r"^ *<(?:-|~|\*\*|~\*) +(\d{3}[ -].*)$", output, re.MULTILINE)
    data_at = next(i for i, line in enumerate(replies) if line.startswith("354 "))
    assert replies[data_at + 1] == f"{code} {text.decode()}", output
    assert not [line for line in replies[data_at + 1:] if line.startswith("250")], output
    assert_nothing_delivered(bed, rcpt)
