"""A relay worker stand-in for the multi-process tests (run as a script, never imported).

    python worker.py ROOT CONFIG ACCOUNT APP OP GO_FILE

With WORKER_GEVENT=1 in the environment it is gevent-monkey-patched first, like the
relay's protocol workers. Prints "ready", waits for GO_FILE to appear, runs OP once and prints one JSON line with
hashes (never the tokens themselves) of what it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def main() -> int:
    root, config_path, account, app, op, go_file = sys.argv[1:7]
    if os.environ.get("WORKER_GEVENT"):  # as the relay's real workers run
        from gevent import monkey
        monkey.patch_all()
    sys.path.insert(0, root)
    from relay.config import load_config
    from relay.tokens import TokenService
    from relay.tokens.errors import TokenError
    from relay.tokens.service import search
    from relay.tokens.store import account_key

    config, _ = load_config(config_path)
    service = TokenService(config)
    if op == "force":
        service.access_token(account, app)  # the token "the upstream refused"
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.002)
    result = {}
    try:
        if op == "due":
            service.refresh_due()
        token = service.access_token(account, app, force_refresh=(op == "force"))
        result["token"] = digest(token)
    except TokenError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    entry = service._entries.get(account_key(account))
    if entry is not None:
        rts = [rt["secret"] for rt in search(entry.cache, "RefreshToken")]
        result["rts"] = sorted(digest(rt) for rt in rts)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
