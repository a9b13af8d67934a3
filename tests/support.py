"""Small helpers the relay's test suites share (end-to-end, process model, benchmarks)."""

from __future__ import annotations

import os
import socket
import time


# Ports come from a block below the kernel's ephemeral range (32768-60999 here), one block per
# pytest-xdist worker, handed out in turn and never twice in one process. Asking the kernel for
# port 0 and closing the probe may return the same port to two callers in a row, or one that an
# outgoing connection of the other worker takes before the relay binds it.
# RELAY_TEST_PORT_BASE=20000 gives a second, concurrent test run ports of its own.
_PORT_BASE = int(os.environ.get("RELAY_TEST_PORT_BASE", "10000"))
_PORT_BLOCK = 1000
_handed_out = set()
_next_offset = [0]


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    digits = worker[2:] if worker.startswith("gw") else ""
    if digits.isdigit():
        return int(digits) % 8
    return 8                                   # not under xdist: a block of its own (bench, tools)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on host right now that this process has not handed out before."""
    start = _PORT_BASE + _worker_index() * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = start + _next_offset[0] % _PORT_BLOCK
        _next_offset[0] += 1
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError("no free port left in this worker's block")


def free_ports(host: str, count: int) -> list:
    return [free_port(host) for _ in range(count)]


def wait_for(predicate, timeout: float, what: str = "condition", interval: float = 0.05):
    """predicate's first true value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
