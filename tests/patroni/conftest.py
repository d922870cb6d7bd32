"""The tests of the router in front of a Patroni cluster (make test's Patroni pass).

They run only under ``testbed.settings_patroni``, inside ``python -m
replica_router.testing.patroni run``; tests/conftest.py leaves this directory
out of the other passes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connections

from replica_router.testing.patroni import PatroniCluster


@pytest.fixture(scope="session")
def patroni() -> PatroniCluster:
    cluster: PatroniCluster = settings.PATRONI
    return cluster


@pytest.fixture(scope="session", autouse=True)
def _quiet_before_test_databases_are_dropped(django_db_setup) -> Iterator[None]:
    """Stop the health monitor before the test database is dropped: PostgreSQL
    refuses to drop a database that its probes are connected to."""
    yield
    from replica_router import runtime

    if runtime.current is not None and runtime.current.monitor is not None:
        runtime.current.monitor.stop()
    connections.close_all()


@pytest.fixture
def db(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Database access outside a TestCase: discovered aliases are named only
    when found (docs/discovery.md), and a switchover ends every session."""
    with django_db_blocker.unblock():
        yield
    connections.close_all()


@pytest.fixture(autouse=True)
def _cluster_whole_again(patroni: PatroniCluster) -> Iterator[None]:
    """Each test starts and leaves with every node up and streaming."""
    patroni.wait_streaming(timeout=120)
    yield
    for name in patroni.nodes:
        if patroni.node_down(name):
            patroni.start(name)
    patroni.wait_streaming(timeout=120)
