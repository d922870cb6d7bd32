import pytest


def pytest_collection_modifyitems(config, items):
    # These tests pin down the routing rules as a site sees them. In `make test`
    # they run after the integration tests have set up the test database, when
    # the mirrored replicas would otherwise serve reads through the primary.
    for item in items:
        if "tests/unit/" in item.nodeid:
            item.add_marker(pytest.mark.replica_routing)
