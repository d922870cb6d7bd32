from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections

from replica_router.testing.cluster import PRIMARY, Cluster
from tests.support.pools import close_pools


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
def _quiet_before_test_databases_are_dropped(django_db_setup, replica_cluster: Cluster):
    """Stop the health monitor before the test database is dropped.

    Its probes connect to the test database, and PostgreSQL refuses to drop a
    database that has a session in it.
    """
    yield
    from replica_router import runtime

    if runtime.current is not None and runtime.current.monitor is not None:
        runtime.current.monitor.stop()
    connections.close_all()
    if settings.VIA_PGBOUNCER:
        # PgBouncer keeps its server connections to the test database after
        # ours close; the primary's would make DROP DATABASE fail ("is being
        # accessed by other users"). The replicas' go with the replayed drop.
        replica_cluster.query(
            PRIMARY,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [connections["default"].settings_dict["NAME"]],
        )


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
            close_pools()
            # What override_settings sends: the router drops its monitor and
            # builds a fresh one on the next read.
            setting_changed.send(
                sender=type(settings._wrapped),
                setting="REPLICA_ROUTER",
                value=settings.REPLICA_ROUTER,
                enter=False,
            )


CONFLICT_TABLE = "recovery_conflict_victim"


@pytest.fixture
def provoke_conflicts(
    replica_cluster: Cluster, recovery_conflicts: Callable[[str], None]
) -> Iterator[Callable[[str], int]]:
    """Make a replica cancel real queries on recovery conflicts.

    Call it with a replica's name. On that replica a reader keeps a
    repeatable-read transaction open on a table, while the primary fills the
    table, empties it and VACUUMs it: replaying the removal of rows the
    reader's snapshot still sees, and the truncation's AccessExclusiveLock,
    cancels the reader (SQLSTATE 40001, "conflict with recovery"), as a hot
    standby without feedback cancels long reports under write load. Rounds go
    on until the replica's own statistics (``pg_stat_database.conflicts`` of
    the test database) count more conflicts than before, and the call returns
    that count. The table is dropped and the replica put back afterwards.
    """
    dbname = connections["default"].settings_dict["NAME"]
    with replica_cluster.connect(PRIMARY, dbname) as primary:
        primary.execute(f"CREATE TABLE {CONFLICT_TABLE} (id int)")
    readers: list[psycopg.Connection] = []

    def server_count(name: str) -> int:
        with replica_cluster.connect(name, dbname) as conn:
            row = conn.execute(
                "SELECT conflicts FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def provoke(name: str) -> int:
        recovery_conflicts(name)
        replica_cluster.wait_replayed([name])
        before = server_count(name)
        deadline = time.monotonic() + 60
        cancelled = 0
        while (count := server_count(name)) <= before:
            assert time.monotonic() < deadline, f"{name} cancelled no query within 60s"
            if not readers:
                reader = psycopg.connect(replica_cluster.conninfo(name, dbname), autocommit=True)
                readers.append(reader)
                reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                reader.execute(f"SELECT count(*) FROM {CONFLICT_TABLE}")
            with replica_cluster.connect(PRIMARY, dbname) as primary:
                primary.execute(f"INSERT INTO {CONFLICT_TABLE} SELECT generate_series(1, 500)")
                primary.execute(f"DELETE FROM {CONFLICT_TABLE}")
                primary.execute(f"VACUUM {CONFLICT_TABLE}")
            replica_cluster.wait_replayed([name])
            try:
                readers[0].execute(f"SELECT count(*) FROM {CONFLICT_TABLE}")
            except (psycopg.errors.SerializationFailure, psycopg.OperationalError):
                # Cancelled, or its session terminated: what the application sees.
                readers.pop().close()
                cancelled += 1
        assert cancelled, "the statistics counted conflicts but no read of ours failed"
        return count

    yield provoke
    for reader in readers:
        reader.close()
    with replica_cluster.connect(PRIMARY, dbname) as primary:
        primary.execute(f"DROP TABLE {CONFLICT_TABLE}")
    replica_cluster.wait_replayed()
