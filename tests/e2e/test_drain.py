"""TERM while a 25 MB message is on its way: the session finishes, then the relay exits."""

import imaplib
import os
import signal
import threading
import time

from tests.e2e.harness import Relay

SIZE = 25 * 1024 * 1024


def big_message() -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = line * (SIZE // len(line) + 1)
    return b"From: a@example.test\r\nSubject: drain test\r\n\r\n" + body[:SIZE]


def append_while_stopping(relay, conn, message) -> tuple:
    outcome = {}
    sender = threading.Thread(target=lambda: outcome.update(append=conn.append("INBOX", None, None, message)))
    sender.start()
    time.sleep(0.3)
    assert sender.is_alive(), "the upload finished before TERM could interrupt it"
    os.kill(relay.process.pid, signal.SIGTERM)
    sender.join(timeout=60)
    return outcome.get("append")


def test_term_during_a_large_append_lets_it_finish(bed, tmp_path):
    relay = Relay(bed, tmp_path)
    try:
        relay.start()
        user = relay.new_user(protocols=["imap"], password="drain pass")
        conn = imaplib.IMAP4_SSL("127.0.0.1", relay.ports["imap-tls"], ssl_context=bed.ssl_context(), timeout=120)
        try:
            conn.login(user.name, user.password)
            message = big_message()
            assert append_while_stopping(relay, conn, message)[0] == "OK"
            conn.select("INBOX")
            typ, data = conn.fetch(b"1", "(BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == message
            conn.logout()
        except BaseException:
            conn.shutdown()
            raise
        assert relay.process.wait(timeout=40) == 0
        assert "worker_draining" in relay.journal_text()
    finally:
        relay.stop()
