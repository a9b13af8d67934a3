from gevent import monkey

# First, before any other import: ssl, socket and threading must be gevent's before msal,
# requests or ssl are loaded, or upstream TLS would block the whole event loop. (That is also
# why this module has no docstring-and-__future__ preamble and the master fork+execs workers.)
monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.server import StreamServer  # noqa: E402
from gevent.threadpool import ThreadPool  # noqa: E402
from structlog.contextvars import bind_contextvars  # noqa: E402

from relay import journal  # noqa: E402
from relay.master import channel  # noqa: E402
from relay.master.workers import BOOT_ERROR  # noqa: E402

# The gevent worker: serves one listener on the socket the master passed in.
#
# Everything it serves comes from the master's init message on the control socket (the exact
# Config, Users and Listener the master validated); it reads no config file itself. Later
# "users" messages swap the user mapping. SIGTERM drains, SIGQUIT/SIGINT stop at once, SIGUSR1
# reopens the journal file. Started by the master as
# `python -m relay.worker --listen-fd N --control-fd M`.

MAX_SESSIONS = 1000          # per worker; beyond this the kernel backlog holds new clients
HASH_THREADS = 4             # scrypt takes ~32 MiB each: bound how many run at once
REFRESH_EVERY = 60.0         # tokens.refresh_due() is safe to call from every worker


class Worker:
    def __init__(self, init: dict, control: socket.socket, listen: socket.socket):
        # Imported here so that a broken install is a journaled boot error, not a bare traceback.
        from relay.services import Services
        from relay.session import serve_connection
        from relay.tokens import TokenService
        from relay.upstream.login import probe_capabilities

        self.config = init["config"]
        self.listener = init["listener"]
        self.generation = init["generation"]
        self.control = control
        self.context = {"worker": os.getpid(), "generation": self.generation}
        hashing = ThreadPool(HASH_THREADS)
        self.services = Services(self.config, init["users"], TokenService(self.config),
                                 offload=lambda function, *args: hashing.apply(function, args))
        self.pool = Pool(MAX_SESSIONS)
        self.server = StreamServer(listen, self._handle, spawn=self.pool)
        self.mode: Optional[str] = None
        self.stop_requested = gevent.event.Event()
        self.log = journal.get_logger(listener=self.listener.name)
        self.serve_connection, self.probe_capabilities = serve_connection, probe_capabilities

    def run(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.stop, "graceful")
        gevent.signal_handler(signal.SIGQUIT, self.stop, "fast")
        gevent.signal_handler(signal.SIGINT, self.stop, "fast")
        gevent.signal_handler(signal.SIGUSR1, journal.reopen)
        gevent.signal_handler(signal.SIGHUP, lambda: None)   # reloads are the master's job
        self.server.start()
        for task in (self._read_master, self._beat, self._refresh_tokens, self._probe):
            gevent.spawn(self._bound, task)
        self._say("ready")
        self.log.info("worker_serving", protocol=self.listener.protocol, security=self.listener.security)
        self.stop_requested.wait()
        return self._drain()

    def _bound(self, function, *args):
        # Each greenlet starts with an empty context: bind worker and generation in every one.
        bind_contextvars(**self.context)
        return function(*args)

    def _handle(self, client: socket.socket, address) -> None:
        self._bound(self.serve_connection, client, address, self.listener, self.services)

    def stop(self, mode: str) -> None:
        if self.mode == "fast" or self.mode == mode:
            return
        self.mode = mode
        self.stop_requested.set()

    def _drain(self) -> int:
        self.server.close()     # stop accepting; the master keeps the socket for the successors
        limit = 0.0 if self.mode == "fast" else self.config.limits.drain_time
        if len(self.pool):
            self.log.info("worker_draining", sessions=len(self.pool), drain_time=limit)
        deadline = time.monotonic() + limit
        while len(self.pool) and self.mode == "graceful" and time.monotonic() < deadline:
            self.pool.join(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        if len(self.pool):
            self.log.warning("sessions_cut", sessions=len(self.pool),
                             reason="fast stop" if self.mode == "fast" else f"drain_time {limit:g} s over")
            self._say_goodbye_before_login()
            self.pool.kill(block=True, timeout=1.0)
        self.log.info("worker_stopped", mode=self.mode)
        return 0

    def _say_goodbye_before_login(self) -> None:
        """Clients that have not logged in get the protocol's 'shutting down' line, so that
        they retry instead of reporting a broken connection."""
        from relay.services import ShuttingDown
        waiting = list(self.services.waiting_before_login)
        for greenlet in waiting:
            greenlet.kill(ShuttingDown, block=False)
        gevent.joinall(waiting, timeout=0.5)

    # Talking to the master -----------------------------------------------------------------

    def _say(self, line: str) -> None:
        try:
            self.control.sendall(line.encode("ascii") + b"\n")
        except OSError:
            self._master_gone()

    def _master_gone(self) -> None:
        if self.mode is None:
            self.log.error("master_gone", action="draining and exiting")
        self.stop("graceful")

    def _beat(self) -> None:
        while True:
            self._say("beat")
            gevent.sleep(channel.BEAT_INTERVAL)

    def _read_master(self) -> None:
        while True:
            try:
                message = channel.read_frame(self.control)
            except (OSError, ValueError, EOFError) as exc:
                self.log.error("control_failed", error=str(exc))
                message = None
            if message is None:
                self._master_gone()
                return
            kind, payload = message
            if kind == "users":
                self.services.swap_users(payload)
                self.log.info("users_swapped", users=len(payload.by_name), path=payload.path)

    # Background work -----------------------------------------------------------------------

    def _refresh_tokens(self) -> None:
        gevent.sleep(random.uniform(5.0, 15.0))    # workers of one start must not all refresh at once
        while True:
            try:
                self.services.tokens.refresh_due()
            except Exception:
                self.log.exception("token_refresh_failed")
            gevent.sleep(REFRESH_EVERY * random.uniform(0.9, 1.1))

    def _probe(self) -> None:
        protocol = self.listener.protocol
        if protocol not in ("smtp", "pop3"):
            return
        try:
            capabilities = self.probe_capabilities(protocol, self.config, self.services.upstream_tls,
                                                   self.log)
        except Exception as exc:
            self.log.info("upstream_probe_failed", protocol=protocol, error=str(exc) or type(exc).__name__)
            return
        self.services.capabilities.learn(protocol, capabilities)
        self.log.debug("upstream_probed", protocol=protocol, capabilities=" ".join(capabilities))


def _arguments(argv: Optional[List[str]]):
    parser = argparse.ArgumentParser(prog="relay.worker",
                                     description="OAuth Relay worker (started by the master)")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listener", default="", help="for ps only")
    parser.add_argument("--generation", default="", help="for ps only")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _arguments(argv)
    control = socket.socket(fileno=args.control_fd)
    listen = socket.socket(fileno=args.listen_fd)
    try:
        message = channel.read_frame(control)
    except Exception as exc:
        print(f"relay worker: cannot read the init message: {exc}", file=sys.stderr)
        return BOOT_ERROR
    if message is None or message[0] != "init":
        print("relay worker: no init message from the master", file=sys.stderr)
        return BOOT_ERROR
    init = message[1]
    journal.configure(init["config"].journal.level, init["config"].journal.file)
    bind_contextvars(worker=os.getpid(), generation=init["generation"])
    try:
        worker = Worker(init, control, listen)
    except Exception:
        journal.get_logger(listener=init["listener"].name).exception("worker_boot_failed")
        return BOOT_ERROR
    return worker.run()


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)   # not sys.exit: a DNS lookup stuck in a pool thread must not hold the exit
