"""The relay under test: one `oauth-relay serve` per pytest worker, in front of the bed."""

import pytest

from tests.e2e.harness import Relay


@pytest.fixture(scope="session")
def relay(bed, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("relay"))
    try:
        yield instance.start()
    finally:
        instance.stop()
