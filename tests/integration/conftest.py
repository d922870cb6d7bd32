from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper

from replica_router.testing.cluster import Cluster


def pytest_collection_modifyitems(config, items):
    # These tests need the real cluster; say how to get one instead of failing
    # each test with a connection error.
    if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR") and any(
        "integration" in item.nodeid for item in items
    ):
        raise pytest.UsageError(
            "tests/integration needs a replicated cluster: run 'make test', or "
            "'python -m replica_router.testing.cluster run -- pytest'. "
            "'make test-unit' runs the tests that need none."
        )


@pytest.fixture(scope="session", autouse=True)
def _quiet_before_test_databases_are_dropped(django_db_setup):
    """Stop the health monitor before the test database is dropped.

    Its probes connect to the test database, and PostgreSQL refuses to drop a
    database that has a session in it.
    """
    yield
    from replica_router import runtime

    if runtime.current is not None and runtime.current.monitor is not None:
        runtime.current.monitor.stop()
    connections.close_all()


@pytest.fixture
def killed(replica_cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """Kill nodes for a test; they are started again, streaming and caught up, afterwards."""
    names: list[str] = []

    def kill(name: str) -> None:
        replica_cluster.kill(name)
        names.append(name)

    yield kill
    for name in names:
        replica_cluster.start(name)
    replica_cluster.wait_streaming()
    replica_cluster.wait_replayed()


@pytest.fixture
def outage(replica_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, for a test that takes nodes down (``kill``, ``stop_primary``).

    Afterwards every node is started again and streaming, and this process
    forgets what the outage left behind: connections and pooled connections to
    the restarted servers (they are dead), and the router's health monitor
    (it may have backed off from the nodes for seconds), so the next test
    starts from a healthy cluster.
    """
    try:
        yield replica_cluster
    finally:
        try:
            for name in replica_cluster.nodes:
                if not replica_cluster.is_up(name):
                    replica_cluster.start(name)
            replica_cluster.wait_streaming()
            replica_cluster.wait_replayed()
        finally:
            connections.close_all()
            for alias in list(DatabaseWrapper._connection_pools):
                connections[alias].close_pool()
            # What override_settings sends: the router drops its monitor and
            # builds a fresh one on the next read.
            setting_changed.send(
                sender=type(settings._wrapped),
                setting="REPLICA_ROUTER",
                value=settings.REPLICA_ROUTER,
                enter=False,
            )
