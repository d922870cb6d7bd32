import pytest

from tests.unit.test_sharing import Clock


def pytest_collection_modifyitems(config, items):
    # These tests pin down the routing rules as a site sees them. In `make test`
    # they run after the integration tests have set up the test database, when
    # the mirrored replicas would otherwise serve reads through the primary.
    for item in items:
        if "tests/unit/" in item.nodeid:
            item.add_marker(pytest.mark.replica_routing)


@pytest.fixture
def wall() -> Clock:
    """A wall clock that moves only when the test says so (the fleet's times)."""
    return Clock()


@pytest.fixture
def mono() -> Clock:
    """A monotonic clock that moves only when the test says so (a process's schedule)."""
    return Clock(now=5000.0)
