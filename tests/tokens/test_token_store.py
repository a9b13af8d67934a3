"""The encrypted token store on its own: key, permissions, atomic writes, locks."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relay.tokens import keyfile
from relay.tokens.errors import TokenStoreError
from relay.tokens.store import LockTimeout, TokenStore, account_key
from tests.support import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_makes_private_key_and_folders(tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    assert mode(store.key_path) == 0o600
    assert mode(tmp_path / "state") == 0o700
    assert mode(store.dir) == 0o700
    key = Path(store.key_path).read_bytes()
    assert TokenStore(str(tmp_path / "state")).key == keyfile.read_key(store.key_path)
    assert len(keyfile.read_key(store.key_path)) == 32 and key.endswith(b"\n")


def test_round_trip_and_ciphertext_hides_tokens(tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    name = account_key("Alice@Contoso.com")
    secret = "0.AQ-refresh-token-" + "x" * 50
    with store.lock(name, 5):
        generation = store.save(name, json.dumps({"secret": secret}))
    assert mode(store.token_path(name)) == 0o600
    raw = Path(store.token_path(name)).read_bytes()
    assert secret.encode() not in raw and b"refresh" not in raw
    text, loaded = store.load(name)
    assert json.loads(text)["secret"] == secret and loaded == generation == store.generation(name)


def test_wrong_key_or_swapped_file_is_refused(tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    for who in ("a@x.com", "b@x.com"):
        with store.lock(account_key(who), 5):
            store.save(account_key(who), "{}")
    os.replace(store.token_path(account_key("a@x.com")), store.token_path(account_key("b@x.com")))
    with pytest.raises(TokenStoreError, match="cannot be decrypted"):
        store.load(account_key("b@x.com"))
    other = tmp_path / "other.key"
    keyfile.create_key(str(other))
    with pytest.raises(TokenStoreError, match="cannot be decrypted"):
        TokenStore(str(tmp_path / "state"), key_file=str(other)).load(account_key("b@x.com"))


@pytest.mark.parametrize("which", ["key", "token"])
def test_loose_permissions_refuse_to_start(tmp_path, which):
    store = TokenStore(str(tmp_path / "state"))
    name = account_key("a@x.com")
    with store.lock(name, 5):
        store.save(name, "{}")
    os.chmod(store.key_path if which == "key" else store.token_path(name), 0o640)
    with pytest.raises(TokenStoreError, match="chmod 600"):
        TokenStore(str(tmp_path / "state"))


def test_lost_key_with_tokens_and_missing_configured_key(tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    with store.lock("user-a", 5):
        store.save("user-a", "{}")
    os.unlink(store.key_path)
    with pytest.raises(TokenStoreError, match="missing"):
        TokenStore(str(tmp_path / "state"))
    with pytest.raises(TokenStoreError, match="does not exist"):
        TokenStore(str(tmp_path / "fresh"), key_file=str(tmp_path / "nope.key"))


def test_lock_excludes_and_times_out(tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    with store.lock("user-a", 5):
        assert store.busy("user-a")
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            with store.lock("user-a", 0.3):
                pass
        assert 0.25 < time.monotonic() - started < 3
    assert not store.busy("user-a")


WRITER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from relay.tokens.store import TokenStore
    store = TokenStore(sys.argv[1])
    print("ready", flush=True)
    for n in range(1000000):
        with store.lock("user-w", 30):
            store.save("user-w", json.dumps({"n": n, "pad": "p" * 200000}))
            store.write_record("user-w", {"n": n})
""")


def _record_stamp(store, name):
    try:
        info = os.stat(store.record_path(name))
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def test_kill_9_mid_write_leaves_a_readable_store(tmp_path):
    state = str(tmp_path / "state")
    store = TokenStore(state)
    seen = []
    for round_ in range(4):
        before = _record_stamp(store, "user-w")
        child = subprocess.Popen([sys.executable, "-c", WRITER, state, ROOT], stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"ready"
            # Kill only once this writer has got going: its own record with n >= 1, so two whole
            # rounds written (a fixed sleep lost that race when fsync was slow under load); then
            # a varying pause, so the kill lands somewhere else in a write each round.
            def wrote_twice(before=before):
                return _record_stamp(store, "user-w") != before and store.read_record("user-w").get("n", 0) >= 1
            wait_for(wrote_twice, 30, what="the writer to write twice", interval=0.005)
            time.sleep(0.05 * round_)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        text, _ = store.load("user-w")
        data = json.loads(text)
        assert len(data["pad"]) == 200000
        seen.append(data["n"])
        assert isinstance(store.read_record("user-w")["n"], int)
    assert seen[-1] > 0
    # The lock died with the writer; the store is usable at once.
    with store.lock("user-w", 1):
        store.save("user-w", "{}")
