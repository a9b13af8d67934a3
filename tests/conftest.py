"""Session fixtures: the end-to-end test bed (IdP + Dovecot + Postfix).

``bed`` starts once per pytest session (once per xdist worker: every bed takes
free ports of its own). A test that uses it gets, afterwards, IdP faults and
knobs reset, its msal sessions closed, and Dovecot/Postfix restarted if it
stopped them. A missing dovecot/postfix binary fails loudly: CI has them.

BED_MAX_CONNECTIONS (default 200) raises Dovecot/Postfix limits for benchmarks.
BED_KEEP_TMP=1 keeps the bed's temp dir (configs and logs) after the session.
"""
from __future__ import annotations

import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # "tests.bed" must import however pytest was started
    sys.path.insert(0, _ROOT)

from tests.bed import Bed, BedError  # noqa: E402


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "bed: the test uses the Dovecot/Postfix/IdP test bed")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "bed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.bed)


@pytest.fixture(scope="session")
def bed():
    """The test bed; see tests/bed/__init__.py for its attributes and helpers."""
    instance = Bed(max_connections=int(os.environ.get("BED_MAX_CONNECTIONS", "200")))
    try:
        instance.start()
    except (BedError, OSError) as exc:
        instance.close()
        pytest.fail("test bed did not start: %s" % exc, pytrace=False)
    yield instance
    instance.close()


@pytest.fixture(autouse=True)
def _bed_cleanup(request):
    """After each test that used ``bed``: reset faults, restart stopped daemons."""
    yield
    if "bed" in request.fixturenames:
        request.getfixturevalue("bed").after_test()
