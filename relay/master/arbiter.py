"""The arbiter: signals, spawning, reaping, reloads. Signal handlers only enqueue; the loop works.

Generations: each validated config is a generation with its own workers. A reload builds the
next one beside the current (sharing the sockets of unchanged addresses), and only once every
new worker serves are the old ones told to drain (SIGTERM). A new generation that cannot start
is abandoned and the old one keeps serving: reloads are all or nothing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import Iterator, List, Optional

from relay import __version__, journal
from relay.master import report, sdnotify, state, validate
from relay.master.generation import Generation, Slot
from relay.master.sockets import BindError, bind_all, close_unless
from relay.master.watcher import UsersWatcher
from relay.master.workers import BOOT_ERROR, Worker, describe_exit

EX_CONFIG = 78          # systemd's RestartPreventExitStatus=78: a bad config must not loop
EX_FAILURE = 1
FAST_STOP = 3.0         # INT/QUIT: workers get this long before SIGKILL
SIGNALS = ("HUP", "TERM", "INT", "QUIT", "USR1", "USR2")


class Arbiter:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.current: Optional[Generation] = None     # serving
        self.pending: Optional[Generation] = None     # starting (the first one, or a reload)
        self.retiring: List[Worker] = []              # draining after a reload
        self.numbers = 0                              # generations made, kept or not
        self.queue: List[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping: Optional[str] = None           # "graceful" | "fast"
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.reload_queued = False
        self.reloads = 0
        self.last_reload: Optional[dict] = None
        self.users_errors: List[str] = []
        self.watcher: Optional[UsersWatcher] = None
        self.reporter = report.Reporter()

    @property
    def log(self):
        # Bound afresh: structlog fixes the level when a logger is bound, and reloads change it.
        return journal.get_logger(role="master")

    def _worker_log(self, worker: Worker):
        return self.log.bind(worker=worker.pid, listener=worker.listener.name, generation=worker.generation)

    # Start ---------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            config, users = validate.whole_config(self.config_path)
        except validate.Refused as exc:
            for error in exc.errors:
                print(error, file=sys.stderr)
            return EX_CONFIG
        journal.configure(config.journal.level, config.journal.file)
        self.log.info("relay_starting", version=__version__, pid=os.getpid(), config=config.path,
                      state_dir=config.state_dir, runtime_dir=config.runtime_dir, users=config.users_file,
                      listeners=" ".join(listener.name for listener in config.listeners))
        other = state.running_pid(config.runtime_dir)
        if other:
            return self._fail(f"another relay (pid {other}) is running with runtime_dir {config.runtime_dir}")
        try:
            sockets = bind_all(config.listeners, {})
        except BindError as exc:
            return self._fail(str(exc))
        for listener in config.listeners:
            self.log.info("listening", listener=listener.name, security=listener.security,
                          workers=listener.workers)
        try:
            state.write_pid(config.runtime_dir)
        except OSError as exc:
            close_unless(sockets, {})
            return self._fail(f"cannot write the pid file in {config.runtime_dir}: {exc.strerror}")
        self._install_signals()
        self.pending = self._generation(config, users, sockets)
        self._watch(config.users_file)
        try:
            return self._loop()
        except Exception:
            self.log.exception("master_failed")
            return EX_FAILURE
        finally:
            self._shutdown()

    def _fail(self, message: str) -> int:
        self.log.error("start_failed", error=message)
        print(message, file=sys.stderr)
        return EX_FAILURE

    def _install_signals(self) -> None:
        for name in SIGNALS:
            signal.signal(getattr(signal, "SIG" + name), self._enqueue)
        signal.signal(signal.SIGCHLD, lambda *_: self._wake())

    def _enqueue(self, signum, _frame) -> None:
        if len(self.queue) < 10:        # a signal storm must not grow the queue forever
            self.queue.append(signum)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass                        # the pipe is full: the loop wakes anyway

    def _watch(self, path: str) -> None:
        if self.watcher is not None and self.watcher.path == os.path.abspath(path):
            return
        if self.watcher is not None:
            self.watcher.stop()
        self.watcher = UsersWatcher(path, self._wake, self.log)
        self.watcher.start()

    def _generation(self, config, users, sockets) -> Generation:
        self.numbers += 1
        return Generation(self.numbers, config, users, validate.digest(config.users_file), sockets)

    # The loop ------------------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            self._sleep()
            now = time.monotonic()
            while self.queue:
                self._dispatch(self.queue.pop(0))
            self._reap(now)
            self._supervise(now)
            self._advance_reload(now)
            self._check_users(now)
            if self.stopping and (not any(self._workers()) or now >= self.stop_deadline):
                return self.exit_code
            self._publish()

    def _sleep(self) -> None:
        busy = self.stopping or self.pending or self.watcher.waiting()
        workers = [worker for worker in self._workers() if worker.channel is not None]
        readers = [self.wake_r] + [worker.channel for worker in workers]
        writers = [worker.channel for worker in workers if worker.outbox]
        readable, writable, _ = select.select(readers, writers, [], 0.1 if busy else 0.5)
        for worker in workers:
            if worker.channel in writable:
                worker.flush()
            if worker.channel in readable:
                worker.receive()
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name[3:].lower()
        self.log.debug("signal", signal=name.upper())
        getattr(self, "handle_" + name)()

    def _generations(self) -> Iterator[Generation]:
        return (generation for generation in (self.current, self.pending) if generation is not None)

    def _workers(self) -> Iterator[Worker]:
        for generation in self._generations():
            yield from generation.workers()
        yield from self.retiring

    # Signals -------------------------------------------------------------------------------

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.pending is not None:
            self.reload_queued = True   # once the generation now starting has settled
            return
        self.reload()

    def handle_term(self) -> None:
        self.stop("graceful")

    def handle_int(self) -> None:
        self.stop("fast")

    handle_quit = handle_int

    def handle_usr1(self) -> None:
        journal.reopen()
        self.log.info("journal_reopened")
        for worker in self._workers():
            worker.signal(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        self.watcher.mark()             # re-read users.yaml now, should inotify miss an edit

    # Workers -------------------------------------------------------------------------------

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self._workers() if w.pid == pid), None)
            if worker is not None:
                worker.reaped(os.waitstatus_to_exitcode(status))
                self._exited(worker, now)

    def _exited(self, worker: Worker, now: float) -> None:
        how, log = describe_exit(worker.exit_code), self._worker_log(worker)
        generation = next((g for g in self._generations() if g.slot_of(worker)), None)
        if worker in self.retiring or generation is None:
            self.retiring = [w for w in self.retiring if w is not worker]
            log.info("worker_exited", how=how)
            return
        delay = generation.vacate(generation.slot_of(worker), now)
        if self.stopping:
            log.info("worker_exited", how=how)
            return
        log.error("worker_died", how=how, restart_in=round(delay, 1))
        if worker.exit_code == BOOT_ERROR and not worker.ready and generation is self.pending:
            generation.failure = (f"a worker for {worker.listener.name} could not start "
                                  f"({how}; see the journal)")

    def _supervise(self, now: float) -> None:
        for worker in list(self._workers()):
            reason = worker.overdue(now)
            if reason:
                self._worker_log(worker).error("worker_killed", reason=reason)
                worker.kill()
        if self.stopping:
            return
        for generation in list(self._generations()):
            for slot in list(generation.due(now)):
                self._spawn(generation, slot, now)

    def _spawn(self, generation: Generation, slot: Slot, now: float) -> None:
        try:
            worker = generation.spawn(slot, generation.users)
        except OSError as exc:
            generation.vacate(slot, now)
            self.log.error("worker_spawn_failed", listener=slot.listener.name, error=str(exc))
            return
        self._worker_log(worker).info("worker_started")

    # Reload --------------------------------------------------------------------------------

    def reload(self) -> None:
        self.log.info("reload_started", generation=self.numbers + 1, config=self.config_path)
        sdnotify.reloading(f"reloading generation {self.numbers + 1}")
        try:
            config, users = validate.whole_config(self.config_path, running=self.current.config)
            sockets = bind_all(config.listeners, self.current.sockets)
        except (validate.Refused, BindError) as exc:
            self._refuse(getattr(exc, "errors", None) or [str(exc)])
            return
        self.pending = self._generation(config, users, sockets)

    def _refuse(self, errors: List[str]) -> None:
        for error in errors:
            self.log.error("config_error", error=error)
        self.log.error("reload_refused", generation=self.current.number, errors=len(errors),
                       reason="keeping the running configuration")
        self._reload_done("refused", errors)

    def _reload_done(self, result: str, errors: List[str]) -> None:
        self.reloads += 1
        self.last_reload = {"result": result, "generation": self.current.number, "errors": errors,
                            "time": time.time()}
        sdnotify.ready(self._status_text())

    def _advance_reload(self, now: float) -> None:
        if self.stopping:
            return
        generation = self.pending
        if generation is not None and generation.serving():
            self._commit(generation)
        elif generation is not None and (generation.failure or now >= generation.deadline):
            self._abandon(generation, generation.failure or
                          f"generation {generation.number} was not serving in time")
        if self.pending is None and self.reload_queued:
            self.reload_queued = False
            self.reload()

    def _commit(self, generation: Generation) -> None:
        old, self.current, self.pending = self.current, generation, None
        config = generation.config
        if old is not None:
            for worker in old.workers():
                worker.retire()
                self.retiring.append(worker)
            close_unless(old.sockets, generation.sockets)
            journal.configure(config.journal.level, config.journal.file)
            if old.config.runtime_dir != config.runtime_dir:
                state.write_pid(config.runtime_dir)
                state.remove_pid(old.config.runtime_dir)
        self._watch(config.users_file)
        if old is not None and old.users.by_name and not generation.users.by_name:
            self._no_users_left(generation.users, len(old.users.by_name))
        self.log.info("serving", generation=generation.number, workers=len(generation.slots),
                      listeners=" ".join(listener.name for listener in config.listeners))
        if old is None:
            sdnotify.ready(self._status_text())
        else:
            self._reload_done("ok", [])

    def _abandon(self, generation: Generation, reason: str) -> None:
        for worker in generation.workers():
            worker.kill()
        if self.current is None:
            # Nothing to fall back to: halt rather than loop (systemd shows the reason).
            self.log.error("boot_failed", reason=reason)
            self.exit_code = EX_FAILURE
            self.stop("fast")
            return
        self.pending = None
        self.retiring.extend(generation.workers())
        close_unless(generation.sockets, self.current.sockets)
        self._refuse([reason])

    def _check_users(self, now: float) -> None:
        # Not while a generation starts: it was validated with its own copy of the users.
        if self.current is None or self.pending or self.stopping or not self.watcher.due(now):
            return
        generation = self.current
        digest = validate.digest(generation.config.users_file)
        if digest == generation.users_digest:
            self.log.debug("users_unchanged", path=generation.config.users_file)
            return
        generation.users_digest = digest
        try:
            users = validate.users_file(generation.config)
        except validate.Refused as exc:
            self.users_errors = exc.errors
            for error in exc.errors:
                self.log.error("users_error", error=error)
            self.log.error("users_refused", path=generation.config.users_file,
                           reason="keeping the last good users", users=len(generation.users.by_name))
            return
        before = len(generation.users.by_name)
        generation.users, self.users_errors = users, []
        for worker in self._workers():
            worker.send("users", users)
        if before and not users.by_name:
            self._no_users_left(users, before)
        else:
            self.log.info("users_reloaded", path=users.path, users=len(users.by_name))

    def _no_users_left(self, users, before: int) -> None:
        # Legitimate on a fresh install, but going from some users to none is how an emptied
        # or truncated users.yaml looks: every login now fails.
        self.log.warning("users_reloaded", path=users.path, users=0, before=before,
                         hint="the users file defines no users now, so every login fails; "
                              "restore it or add users with `oauth-relay user add`")

    # Stop ----------------------------------------------------------------------------------

    def stop(self, mode: str) -> None:
        if self.stopping in ("fast", mode):
            return
        self.stopping = mode
        self.log.info("stopping", mode=mode)
        sdnotify.stopping(f"stopping ({mode})")
        now = time.monotonic()
        drain = max([worker.config.limits.drain_time for worker in self._workers()] + [0.0])
        self.stop_deadline = now + (drain + 5.0 if mode == "graceful" else FAST_STOP)
        for worker in self._workers():
            if mode == "graceful":
                worker.retire()
            else:
                worker.kill_at = now + FAST_STOP
                worker.signal(signal.SIGQUIT)
        for generation in self._generations():
            close_unless(generation.sockets, {})   # the kernel stops queueing new clients
            generation.sockets = {}

    def _shutdown(self) -> None:
        for worker in self._workers():
            if worker.exit_code is None:
                self._worker_log(worker).error("worker_killed", reason="still running at the end of the stop")
                worker.kill()
        for worker in list(self._workers()):
            if worker.exit_code is None:
                worker.reaped(worker.proc.wait())
        self.watcher.stop()
        for generation in self._generations():
            close_unless(generation.sockets, {})
        state.remove_pid((self.current or self.pending).config.runtime_dir)
        self._publish(final=True)
        self.log.info("stopped", exit_code=self.exit_code)
        os.close(self.wake_r)
        os.close(self.wake_w)

    # What the outside sees -----------------------------------------------------------------

    def _status_text(self) -> str:
        return report.status_text(self.current or self.pending, self.last_reload, self.users_errors)

    def _publish(self, final: bool = False) -> None:
        shown = self.pending or self.current
        phase = ("stopped" if final else "stopping" if self.stopping else
                 "starting" if self.current is None else "reloading" if self.pending else "running")
        status = report.status_document(phase, self.config_path, self.current, shown, self.reloads,
                                        self.last_reload, self.users_errors,
                                        [] if final else self._workers())
        text = None if self.stopping else self._status_text()
        self.reporter.publish((self.current or shown).config.runtime_dir, status, text)


def serve(config_path: str) -> int:
    """`oauth-relay serve`: run the master in the foreground until TERM, INT or QUIT."""
    return Arbiter(config_path).run()
