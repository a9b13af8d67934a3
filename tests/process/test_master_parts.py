"""The master's small parts, in-process (never import relay.worker here: it monkey-patches)."""

from __future__ import annotations

import signal
import socket

import pytest

from relay.config.models import Listener
from relay.master import channel, control, generation, sockets, state
from relay.master.workers import describe_exit


def test_backoff_restarts_at_once_then_slows_down_to_a_cap():
    delays = [generation.backoff(failures) for failures in range(1, 10)]
    assert delays[:4] == [0.0, 1.0, 2.0, 4.0]
    assert max(delays) == generation.MAX_BACKOFF and delays == sorted(delays)


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"


def test_frames_carry_objects_and_lines_are_split():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(channel.frame("users", {"a": 1}) + channel.frame("init", [2]))
        assert channel.read_frame(right) == ("users", {"a": 1})
        assert channel.read_frame(right) == ("init", [2])
        left.close()
        assert channel.read_frame(right) is None
    lines = channel.LineBuffer()
    assert lines.feed(b"rea") == [] and lines.feed(b"dy\nbeat\nbe") == ["ready", "beat"]
    assert lines.feed(b"x" * 5000) == [] and lines.feed(b"\nbeat\n") == ["beat"]


def _listener(port: int) -> Listener:
    return Listener(protocol="imap", host="127.0.0.1", port=port, security="none")


def test_bind_all_reuses_unchanged_addresses_and_is_all_or_nothing():
    first = sockets.bind(_listener(0))
    port = first.getsockname()[1]
    try:
        kept = {("127.0.0.1", port): first}
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            with pytest.raises(sockets.BindError, match=f"127.0.0.1:{taken}"):
                sockets.bind_all([_listener(port), _listener(taken)], kept)
        assert first.fileno() != -1      # the reused socket survives the failed attempt
        assert sockets.backlog() >= socket.SOMAXCONN
    finally:
        first.close()


def test_runtime_dir_is_found_even_in_a_broken_file(tmp_path):
    config = tmp_path / "relay.yaml"
    config.write_text("runtime_dir: run  # here\nlisteners: [\n")
    assert control.runtime_dir_of(str(config)) == str(tmp_path / "run")
    config.write_text("listeners: [\n")
    assert control.runtime_dir_of(str(config)) == control.DEFAULT_RUNTIME_DIR


def test_pid_file_of_a_dead_process_is_not_a_running_relay(tmp_path):
    (tmp_path / state.PID_FILE).write_text("999999999\n")
    assert state.running_pid(str(tmp_path)) is None
    state.write_pid(str(tmp_path))
    assert state.running_pid(str(tmp_path)) is None     # ourselves: not "another" relay
    state.remove_pid(str(tmp_path))
    assert not (tmp_path / state.PID_FILE).exists()
