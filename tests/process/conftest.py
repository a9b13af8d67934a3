"""Fixtures for the process-model tests (helpers: tests/process/helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List

import pytest

from tests.process.helpers import Relay


def pytest_configure(config):
    config.addinivalue_line("markers", "process: starts real relay processes (xdist-safe: own ports and dirs)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/process" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.process)


@pytest.fixture
def short_dir(tmp_path):
    """A short directory: the journal masks runs of 32+ path-like characters as secrets, and
    AF_UNIX paths are limited to 108 bytes. Its files are copied to tmp_path at the end."""
    path = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    yield path
    for item in path.iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / item.name)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def relay_factory(short_dir):
    made: List[Relay] = []

    def make(**kwargs) -> Relay:
        relay = Relay(short_dir, **kwargs)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.cleanup()


@pytest.fixture
def relay(relay_factory) -> Relay:
    return relay_factory().start()
