"""What the outside sees of the master: status.json for `oauth-relay reload`, STATUS= for systemd."""

from __future__ import annotations

import os
from typing import List, Optional

from relay.master import sdnotify, state


def status_text(generation, last_reload: Optional[dict], users_errors: List[str]) -> str:
    serving = sum(1 for worker in generation.workers() if worker.ready)
    text = f"generation {generation.number}: {serving} workers serving"
    if last_reload and last_reload["result"] != "ok":
        text += f"; last reload refused: {last_reload['errors'][0]}"
    if users_errors:
        text += f"; users file refused: {users_errors[0]}"
    return text


class Reporter:
    """Writes status.json and sends STATUS= only when something changed."""

    def __init__(self) -> None:
        self.written: Optional[dict] = None
        self.sent = ""

    def publish(self, runtime_dir: str, status: dict, text: Optional[str]) -> None:
        if status != self.written:
            self.written = status
            state.write_status(runtime_dir, status)
        if text is not None and text != self.sent:
            self.sent = text
            sdnotify.status(text)


def status_document(phase: str, config_path: str, current, shown, reloads: int,
                    last_reload: Optional[dict], users_errors: List[str], workers) -> dict:
    """`current` is the serving generation (None while booting); `shown` the newest one."""
    config = shown.config
    return {
        "pid": os.getpid(), "state": phase, "config": config_path,
        "generation": current.number if current else 0,
        "reloads": reloads, "last_reload": last_reload,
        "users": {"path": config.users_file, "count": len(shown.users.by_name), "errors": users_errors},
        "listeners": [listener.name for listener in config.listeners],
        "workers": [worker.describe() for worker in workers],
    }
