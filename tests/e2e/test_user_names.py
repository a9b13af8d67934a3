"""Old programs and their users type names in any case ('Scanner', 'SCANNER'): the relay's
user names match without regard to case, as mail logins do, on all three protocols."""

from __future__ import annotations

import imaplib
import poplib
import smtplib


def test_a_name_in_other_letter_case_logs_in(relay, bed):
    user = relay.new_user(password="right-password")
    shouted = user.name.upper()
    assert shouted != user.name
    with imaplib.IMAP4_SSL("127.0.0.1", relay.ports["imap-tls"], ssl_context=bed.ssl_context()) as imap:
        assert imap.login(shouted, user.password)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    pop = poplib.POP3_SSL("127.0.0.1", relay.ports["pop3-tls"], context=bed.ssl_context())
    try:
        pop.user(shouted.title())
        assert pop.pass_(user.password).startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    with smtplib.SMTP_SSL("127.0.0.1", relay.ports["smtp-tls"], context=bed.ssl_context(), timeout=30) as smtp:
        assert smtp.login(shouted, user.password)[0] == 235
    logins = [line for line in relay.journal_text().splitlines() if " login_ok " in line and
              f"account={user.account} " in line]
    assert len(logins) == 3 and all(f" user={user.name} " in line for line in logins), logins
