"""Reads keep being served when a replica dies under them, and when the primary stops.

Each test kills a real postmaster (SIGKILL) or stops the primary, and checks the
read that was headed for it, the state the monitor records, and where the read
was really served (the server port seen by the query itself).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import OperationalError, connections, router, transaction
from django.db.models.expressions import RawSQL
from django.test import override_settings

from replica_router.backends.postgresql.base import DatabaseWrapper
from replica_router.health import State
from replica_router.health.monitor import Monitor
from replica_router.runtime import get_monitor
from replica_router.testing.cluster import PRIMARY, Cluster
from tests.factories import AuthorFactory
from tests.polling import wait_for
from tests.testapp.models import Author

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)


def served_port(using: str | None = None) -> int:
    """Read a row through the router (or an alias) and return the server port it ran on."""
    queryset = Author.objects.all() if using is None else Author.objects.using(using)
    return queryset.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[
        0
    ]


@pytest.fixture
def slow_monitor(replica_cluster: Cluster) -> Iterator[Monitor]:
    """A monitor that probes once at start and then not for a minute: whatever
    notices a dead replica during the test is the application itself. (The
    replicas replay the last test's writes first, or lag at that one probe
    would keep them out of rotation.)"""
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 60.0}):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        yield monitor


@pytest.fixture
def seeded(replica_cluster: Cluster) -> None:
    AuthorFactory()
    replica_cluster.wait_replayed()


@db
def test_a_refused_connection_is_served_by_another_replica(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    connections["replica_1"].close()
    killed("replica_1")
    # The alias is asked for explicitly, as a read routed to it would be.
    assert served_port("replica_1") == replica_cluster.port("replica_2")
    assert slow_monitor.snapshot.node("replica_1").state is State.DOWN
    assert {router.db_for_read(Author) for _ in range(10)} == {"replica_2"}


@db
def test_a_connection_that_breaks_mid_read_is_retried_elsewhere(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    # replica_1 keeps its connection (CONN_MAX_AGE): open it, then kill the server.
    assert served_port("replica_1") == replica_cluster.port("replica_1")
    killed("replica_1")
    assert served_port("replica_1") == replica_cluster.port("replica_2")
    assert slow_monitor.snapshot.node("replica_1").state is State.DOWN


@db
def test_a_pooled_replica_that_dies_is_read_around(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    # replica_2 is pooled: its idle pool connections break when the server dies.
    assert served_port("replica_2") == replica_cluster.port("replica_2")
    connections["replica_2"].close()  # back to the pool, still open
    killed("replica_2")
    assert served_port("replica_2") == replica_cluster.port("replica_1")
    assert slow_monitor.snapshot.node("replica_2").state is State.DOWN


@db
def test_a_read_inside_a_transaction_on_a_dead_replica_is_not_retried(
    seeded, slow_monitor: Monitor, killed
):
    assert Author.objects.using("replica_1").exists()
    killed("replica_1")
    with pytest.raises(OperationalError), transaction.atomic(using="replica_1"):
        list(Author.objects.using("replica_1").all())


@db
def test_a_borrowed_connection_serves_one_cursor_only(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    connections["replica_1"].close()
    killed("replica_1")
    served_port("replica_1")
    wrapper = connections["replica_1"]
    assert isinstance(wrapper, DatabaseWrapper)
    assert wrapper.borrowed_from == "replica_2"
    replica_cluster.start("replica_1")
    replica_cluster.wait_streaming(["replica_1"])
    # Still marked down (the monitor has not looked), so this read is borrowed
    # again, on a fresh connection; the old one was dropped.
    assert served_port("replica_1") == replica_cluster.port("replica_2")


@db
def test_a_down_pool_does_not_storm_the_server_or_grow_threads(
    seeded, replica_cluster: Cluster, killed
):
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2}):
        for _ in range(10):
            list(Author.objects.all())
        pool = connections["replica_2"].pool
        killed("replica_2")
        wait_for(lambda: get_monitor().snapshot.node("replica_2").state is State.DOWN)
        threads_before = threading.active_count()
        errors_before = pool.get_stats().get("connections_errors", 0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            list(Author.objects.all())  # routed around the dead replica
        assert threading.active_count() <= threads_before
        assert pool.get_stats().get("connections_errors", 0) - errors_before <= 3

        replica_cluster.start("replica_2")
        replica_cluster.wait_streaming(["replica_2"])
        wait_for(lambda: get_monitor().snapshot.node("replica_2").in_rotation)
        connections["replica_2"].close()
        # The pool the failure left behind is gone (closed by the backend) or,
        # if the monitor noticed first, still holds connections to the dead
        # server: either way a fresh one serves the replica's return.
        stale_pool = DatabaseWrapper._connection_pools.pop("replica_2", None)
        if stale_pool is not None:
            stale_pool.close()
        assert served_port("replica_2") == replica_cluster.port("replica_2")


@db
def test_with_the_primary_down_reads_go_on_and_writes_fail_fast(seeded, replica_cluster: Cluster):
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2}):
        router.db_for_read(Author)
        monitor = get_monitor()
        connections["default"].close()
        replica_cluster.stop_primary()
        try:
            wait_for(lambda: monitor.snapshot.primary.state is State.DOWN)
            for _ in range(20):
                assert Author.objects.count() >= 1
            assert all(n.in_rotation for n in monitor.snapshot.replicas)
            with pytest.raises(OperationalError):
                AuthorFactory()
            out = io.StringIO()
            with pytest.raises(SystemExit) as exited:
                call_command("replica_health", "--check", stdout=out)
            assert exited.value.code == 2
        finally:
            replica_cluster.start(PRIMARY)
            replica_cluster.wait_streaming()
            replica_cluster.wait_replayed()
            connections["default"].close()
