"""Fixtures for the token tests: the bed's identity provider, a relay config, a terminal.

The relay's code talks to the stand-in IdP through msal exactly as it would to Entra ID;
only the authority string and the CA differ.
"""

from __future__ import annotations

from typing import List

import pytest

from relay import journal
from tests.tokens.helpers import Relay, Terminal


@pytest.fixture
def idp(bed):
    """The bed's IdP control; tests/conftest.py resets its faults and knobs after each test."""
    bed.idp.reset_test_state()
    bed.idp.set_device_flow(interval=1)  # msal then polls once a second
    bed.idp.test_ca_file = bed.ca_file
    return bed.idp


@pytest.fixture
def relay(tmp_path, idp):
    return Relay(tmp_path, idp)


@pytest.fixture
def terminal(idp):
    made: List[Terminal] = []

    def make(**kwargs) -> Terminal:
        made.append(Terminal(idp, **kwargs))
        return made[-1]
    yield make
    for term in made:
        term.join()


@pytest.fixture
def journal_file(tmp_path):
    path = str(tmp_path / "journal.log")
    journal.configure("full-debug", path)
    yield path
    journal.configure("info", None)
