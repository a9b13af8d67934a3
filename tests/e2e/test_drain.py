"""TERM while a 25 MB message is on its way: the session finishes, then the relay exits.

The upload is a synchronising literal sent in two halves, with TERM in between, so the
message is certainly in flight when the relay is told to stop.
"""

import os
import signal

from tests.e2e.harness import Relay, wait_for
from tests.e2e.test_imap import RawImap

SIZE = 25 * 1024 * 1024


def big_message() -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = line * (SIZE // len(line) + 1)
    return b"From: a@example.test\r\nSubject: drain test\r\n\r\n" + body[:SIZE]


def test_term_during_a_large_append_lets_it_finish(bed, tmp_path):
    relay = Relay(bed, tmp_path, journal_level="info")
    try:
        relay.start()
        user = relay.new_user(protocols=["imap"], password="drain pass")
        message = big_message()
        with RawImap.open(relay, bed, "tls") as client:
            assert client.command(b"A1", f'LOGIN {user.name} "drain pass"'.encode())[-1].startswith(b"A1 OK")
            client.send(b"A2 APPEND INBOX {%d}\r\n" % len(message))
            assert client.line().startswith(b"+")
            half = len(message) // 2
            client.send(message[:half])
            os.kill(relay.process.pid, signal.SIGTERM)
            wait_for(lambda: "worker_draining" in relay.journal_text(), 20, "the workers to start draining")
            client.send(message[half:] + b"\r\n")
            assert client.until(b"A2", timeout=60)[-1].startswith(b"A2 OK")
            assert client.command(b"A3", b"LOGOUT")[-1].startswith(b"A3 OK")
        assert relay.process.wait(timeout=40) == 0
        assert bed.dovecot.messages(user.account) == [message.replace(b"\r\n", b"\n")]
    finally:
        relay.stop()
