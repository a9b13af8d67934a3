"""A generation: one validated config, its listening sockets and a worker slot per process."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from relay.config.models import Config, Listener, Users
from relay.master.channel import BOOT_TIMEOUT
from relay.master.sockets import Address, key
from relay.master.workers import Worker

STABLE_AFTER = 30.0     # a worker that served this long resets its slot's backoff
MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    # The first restart is immediate (a killed worker is back within a second); crash loops
    # then slow down: 1, 2, 4 ... 30 s, so a broken slot cannot spin the machine.
    return 0.0 if failures <= 1 else min(MAX_BACKOFF, 2.0 ** (failures - 2))


@dataclass
class Slot:
    listener: Listener
    index: int
    worker: Optional[Worker] = None
    failures: int = 0
    restart_at: float = 0.0


class Generation:
    def __init__(self, number: int, config: Config, users: Users, users_digest: str,
                 sockets: Dict[Address, socket.socket]):
        self.number = number
        self.config = config
        self.users = users              # the users it was validated with
        self.users_digest = users_digest
        self.sockets = sockets
        self.slots: List[Slot] = [Slot(listener, index) for listener in config.listeners
                                  for index in range(listener.workers)]
        self.deadline = time.monotonic() + BOOT_TIMEOUT + 5.0   # to be fully serving
        self.failure: Optional[str] = None                       # why it could not start

    def workers(self) -> Iterator[Worker]:
        return (slot.worker for slot in self.slots if slot.worker is not None)

    def serving(self) -> bool:
        return all(slot.worker is not None and slot.worker.ready for slot in self.slots)

    def spawn(self, slot: Slot, users: Users) -> Worker:
        worker = Worker(slot.listener, self.number, self.config)
        worker.spawn(self.sockets[key(slot.listener)], users)
        slot.worker = worker
        return worker

    def slot_of(self, worker: Worker) -> Optional[Slot]:
        return next((slot for slot in self.slots if slot.worker is worker), None)

    def vacate(self, slot: Slot, now: float) -> float:
        """The worker in `slot` is gone: when may its successor start?"""
        worker, slot.worker = slot.worker, None
        if worker is not None and worker.ready and now - worker.started >= STABLE_AFTER:
            slot.failures = 0
        slot.failures += 1
        slot.restart_at = now + backoff(slot.failures)
        return slot.restart_at - now

    def due(self, now: float) -> Iterator[Slot]:
        return (slot for slot in self.slots if slot.worker is None and slot.restart_at <= now)
