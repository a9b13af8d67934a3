"""Refreshing: rotation on disk, several processes at once, refresh_due, IdP down or slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from relay.tokens import TokenNeedsSignIn, TokenService, TokenUnavailable
from relay.tokens.service import search
from relay.tokens.store import account_key
from tests.tokens.helpers import (ACCOUNT, age_access_tokens, edit_record, idp_calls, sign_in,
                                  stored_cache, stored_refresh_tokens)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
NAME = account_key(ACCOUNT)


@pytest.fixture
def signed_in(relay, idp):
    relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    idp.reset_counts()
    return config


def refreshes(idp) -> int:
    return idp.counts().get("token:refresh_token", 0)


def test_rotation_keeps_newest_refresh_token_on_disk(signed_in, idp):
    service = TokenService(signed_in)
    seen = [stored_refresh_tokens(signed_in, NAME)]
    tokens = {service.access_token(ACCOUNT, "contoso")}
    for _ in range(3):
        tokens.add(service.access_token(ACCOUNT, "contoso", force_refresh=True))
        on_disk = stored_refresh_tokens(signed_in, NAME)
        in_memory = sorted(rt["secret"] for rt in search(service._entries[NAME].cache, "RefreshToken"))
        assert on_disk == in_memory and on_disk not in seen and len(on_disk) == 1
        seen.append(on_disk)
    assert len(tokens) == 4 and refreshes(idp) == 3
    # Another process (a new service) refreshes with what is on disk.
    assert TokenService(signed_in).access_token(ACCOUNT, "contoso", force_refresh=True) not in tokens


def run_workers(config, op: str, tmp_path, count: int = 3, gevent_first: bool = True):
    go = str(tmp_path / f"go-{op}")
    children = []
    for index in range(count):
        env = dict(os.environ)
        env.pop("WORKER_GEVENT", None)
        if gevent_first and index == 0:
            env["WORKER_GEVENT"] = "1"
        children.append(subprocess.Popen(
            [sys.executable, WORKER, ROOT, config.path, ACCOUNT, "contoso", op, go],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    try:
        for child in children:
            line = child.stdout.readline()
            assert line.strip() == b"ready", child.stderr.read().decode()[-2000:]
        open(go, "w").close()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


def test_three_workers_refuse_token_at_once_one_refresh(signed_in, idp, tmp_path):
    before = stored_refresh_tokens(signed_in, NAME)
    results = run_workers(signed_in, "force", tmp_path)
    assert all("token" in r for r in results), results
    assert refreshes(idp) == 1  # no storm: the others took the fresh token from disk
    assert len({r["token"] for r in results}) == 1
    after = stored_refresh_tokens(signed_in, NAME)
    assert after != before
    import hashlib
    newest = [hashlib.sha256(rt.encode()).hexdigest()[:16] for rt in after]
    assert all(r["rts"] == newest for r in results)  # no worker holds a newer one than the disk


def test_three_workers_with_expiring_token_one_refresh(signed_in, idp, tmp_path):
    age_access_tokens(signed_in, NAME, left=120)
    results = run_workers(signed_in, "access", tmp_path)
    assert all("token" in r for r in results), results
    assert refreshes(idp) == 1 and len({r["token"] for r in results}) == 1


def test_three_workers_refresh_due_idle_account_once(signed_in, idp, tmp_path):
    edit_record(signed_in, NAME, last_refresh=time.time() - 2 * 86400)
    results = run_workers(signed_in, "due", tmp_path)
    assert all("token" in r for r in results), results
    assert refreshes(idp) == 1


def test_cached_token_needs_no_network(signed_in, idp):
    service = TokenService(signed_in)
    first = service.access_token(ACCOUNT, "contoso")
    for _ in range(20):
        assert service.access_token(ACCOUNT, "contoso") == first
    assert idp_calls(idp) == {}


def test_worker_picks_up_a_token_another_process_wrote(signed_in, idp):
    worker, other = TokenService(signed_in), TokenService(signed_in)
    old = worker.access_token(ACCOUNT, "contoso")
    new = other.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert new != old
    assert worker.access_token(ACCOUNT, "contoso") == new  # noticed the rewrite, no network
    assert refreshes(idp) == 1


def test_refresh_due(signed_in, idp):
    service = TokenService(signed_in)
    service.refresh_due()
    assert refreshes(idp) == 0  # fresh token, refreshed just now
    edit_record(signed_in, NAME, last_refresh=time.time() - 86400 - 5)
    rts = stored_refresh_tokens(signed_in, NAME)
    service.refresh_due()
    assert refreshes(idp) == 1 and stored_refresh_tokens(signed_in, NAME) != rts
    row, = service.accounts()
    assert row["state"] == "ok" and row["last_refresh"] == row["refresh_token_rotated"]
    service.refresh_due()
    assert refreshes(idp) == 1
    age_access_tokens(signed_in, NAME, left=400)  # within refresh_ahead (600 s)
    service.refresh_due()
    assert refreshes(idp) == 2
    stored = stored_cache(signed_in, NAME)["AccessToken"]
    assert all(int(at["expires_on"]) > time.time() + 3000 for at in stored.values())


def test_refresh_due_skips_accounts_that_need_sign_in(signed_in, idp):
    idp.revoke(ACCOUNT, code=700082)
    service = TokenService(signed_in)
    with pytest.raises(TokenNeedsSignIn):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    edit_record(signed_in, NAME, last_refresh=0)
    idp.reset_counts()
    service.refresh_due()
    TokenService(signed_in).refresh_due()
    assert refreshes(idp) == 0
    assert stored_refresh_tokens(signed_in, NAME)  # never deleted


def test_idp_down_valid_token_still_works(relay, idp):
    app = relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    token = TokenService(config).access_token(ACCOUNT, "contoso")
    from tests.support import free_port
    app["authority"] = f"https://127.0.0.1:{free_port()}/contoso"  # nobody there
    down = relay.config()
    service = TokenService(down)
    assert service.access_token(ACCOUNT, "contoso") == token
    with pytest.raises(TokenUnavailable, match="cannot reach"):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert service.access_token(ACCOUNT, "contoso") == token  # kept, still served
    assert service.accounts()[0]["state"] == "error"


def test_idp_slow(relay, idp, monkeypatch):
    relay.add_app(flow="auth_code")
    relay.upstream["login_timeout"] = 1
    config = relay.config()
    sign_in(config, idp)
    service = TokenService(config)
    token = service.access_token(ACCOUNT, "contoso")
    rts = stored_refresh_tokens(config, NAME)
    idp.set_latency(3)
    started = time.monotonic()
    with pytest.raises(TokenUnavailable, match="in time"):
        service.access_token(ACCOUNT, "contoso", force_refresh=True)
    assert time.monotonic() - started < 2.8
    assert service.access_token(ACCOUNT, "contoso") == token
    # Backing off: no new request while the wait lasts, even for another process.
    idp.set_latency(0)
    # The IdP still answers the abandoned request 3 s after it came; let it, so that it does
    # not land in (and use up a fault of) a later test.
    time.sleep(max(0.0, started + 3.3 - time.monotonic()))
    calls = refreshes(idp)
    with pytest.raises(TokenUnavailable, match="waiting before retrying"):
        TokenService(config).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert refreshes(idp) == calls
    edit_record(config, NAME, backoff_until=0)
    assert service.access_token(ACCOUNT, "contoso", force_refresh=True) != token
    assert stored_refresh_tokens(config, NAME) != rts
    assert service.accounts()[0]["state"] == "ok"
