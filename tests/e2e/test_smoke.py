import imaplib


def test_imap_login_through_the_relay(relay, bed):
    user = relay.new_user(password="plain pass")
    conn = imaplib.IMAP4_SSL("127.0.0.1", relay.ports["imap-tls"], ssl_context=bed.ssl_context())
    typ, data = conn.login(user.name, user.password)
    assert typ == "OK"
    assert conn.select("INBOX")[0] == "OK"
    conn.logout()
