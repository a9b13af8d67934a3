"""Notices edits of users.yaml. Runs in the master only: watchdog's thread breaks under gevent.

Editors save by writing a temp file and renaming it over the old one, so the directory is
watched, not the file. Events only mark the file dirty; the arbiter's loop acts once nothing
has changed for DEBOUNCE seconds. A stat() poll backs inotify up (watch limits, odd mounts).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional, Tuple

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE = 0.3
POLL_EVERY = 2.0


def _signature(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "UsersWatcher"):
        self.watcher = watcher

    def on_any_event(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # our own reads of the file fire these; only writes and renames matter
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and os.path.abspath(os.fsdecode(path)) == self.watcher.path:
                self.watcher.mark()


class UsersWatcher:
    def __init__(self, path: str, wake: Callable[[], None], log):
        self.path = os.path.abspath(path)
        self.wake = wake
        self.log = log
        self._lock = threading.Lock()
        self._dirty_at: Optional[float] = None
        self._observer = None
        self._signature = _signature(self.path)
        self._polled = time.monotonic()

    def start(self) -> None:
        directory = os.path.dirname(self.path)
        try:
            observer = Observer()
            observer.daemon = True
            observer.schedule(_Handler(self), directory, recursive=False)
            observer.start()
        except (OSError, RuntimeError) as exc:
            self.log.warning("users_watch_failed", directory=directory, error=str(exc),
                             fallback=f"polling every {POLL_EVERY:.0f} s")
            return
        self._observer = observer
        self.log.debug("users_watch", directory=directory, file=self.path)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2.0)
            self._observer = None

    def mark(self) -> None:
        """Something happened to the file (any thread): act once it has settled."""
        with self._lock:
            self._dirty_at = time.monotonic()
        self.wake()

    def due(self, now: float) -> bool:
        """True once per settled change; the caller then reads and validates the file."""
        if now - self._polled >= POLL_EVERY:
            self._polled = now
            signature = _signature(self.path)
            if signature != self._signature:
                self._signature = signature
                self.mark()
        with self._lock:
            if self._dirty_at is None or now - self._dirty_at < DEBOUNCE:
                return False
            self._dirty_at = None
        self._signature = _signature(self.path)
        return True

    def waiting(self) -> bool:
        with self._lock:
            return self._dirty_at is not None
