"""systemd's sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from typing import Optional


def _address(name: str) -> str:
    # '@name' is a Linux abstract socket: its first byte is NUL on the wire.
    return "\0" + name[1:] if name.startswith("@") else name


def notify(*fields: str, environ: Optional[dict] = None) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") as one message; False if nobody listens."""
    name = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not name or not fields:
        return False
    payload = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, _address(name))
        return True
    except OSError:
        return False  # systemd gone or not listening: never a reason to stop serving


def ready(status: str) -> bool:
    return notify("READY=1", "STATUS=" + status)


def reloading(status: str) -> bool:
    # Type=notify-reload wants the monotonic time of the reload start, in microseconds.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=" + status)


def stopping(status: str) -> bool:
    return notify("STOPPING=1", "STATUS=" + status)


def status(text: str) -> bool:
    return notify("STATUS=" + text)
