"""Through PgBouncer in transaction pooling mode: what the health probes must
not leave on PgBouncer's server connections, and what breaks there that the
system checks W007 and W008 warn of.

The rest of the suite's PgBouncer coverage is the tests marked ``pgbouncer``,
which ``make test`` runs a second time with every alias through PgBouncer; the
cluster tool's PgBouncers are tested in test_cluster.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest

from replica_router.health.probe import ProbeConnections, _select
from replica_router.testing.cluster import PRIMARY, Cluster


@pytest.fixture
def bouncers(replica_cluster: Cluster) -> Cluster:
    """The session's cluster with a PgBouncer in front of each node (added if it has none)."""
    replica_cluster.start_pgbouncers()
    return replica_cluster


def _through(cluster: Cluster, node: str) -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": cluster.pgbouncer_port(node),
        "user": "postgres",
        "dbname": "postgres",
    }


def _session(cluster: Cluster, node: str) -> psycopg.Connection:
    return psycopg.connect(**_through(cluster, node), autocommit=True, prepare_threshold=None)


def test_a_probe_through_pgbouncer_sees_the_node(bouncers: Cluster) -> None:
    # PgBouncer refuses libpq's "options" start-up parameter ("unsupported
    # startup parameter: options"), which the probe used to set its statement
    # timeout with: every node behind PgBouncer was found down.
    probes = ProbeConnections()
    try:
        for node in bouncers.nodes:
            probe = probes.probe(node, _through(bouncers, node), timeout=1.0)
            assert probe.ok, (node, probe.error)
            assert probe.in_recovery is (node != PRIMARY)
    finally:
        probes.close()


def test_the_probe_timeout_holds_and_stays_in_its_transaction(bouncers: Cluster) -> None:
    with _session(bouncers, "replica_1") as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            _select(conn, "SELECT pg_sleep(5)", 0.1)
        # A session-level SET would stay on the server connection that PgBouncer
        # lends the next client.
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_probes_leave_no_prepared_statement_for_the_next_server_connection(
    bouncers: Cluster,
) -> None:
    # psycopg prepares a query on its sixth run. Behind a transaction pooler
    # the next run may get another server connection, where the statement does
    # not exist: the kept connection fails and the probe connects again.
    probes = ProbeConnections()
    params = _through(bouncers, "replica_1")
    try:
        for _ in range(8):
            assert probes.probe("replica_1", params, timeout=1.0).ok
        kept = probes._kept["replica_1"][1]
        # Another client holds the server connection the probes ran on, so
        # PgBouncer gives the next probe a new one.
        with _session(bouncers, "replica_1") as other, other.transaction():
            other.execute("SELECT 1")
            probe = probes.probe("replica_1", params, timeout=1.0)
        assert probe.ok, probe.error
        assert probes._kept["replica_1"][1] is kept, "the kept connection failed"
    finally:
        probes.close()


# -- what the system checks warn of ---------------------------------------------------


@contextlib.contextmanager
def _holding(cluster: Cluster, node: str, pid: int) -> Iterator[None]:
    """Hold the server session ``pid`` in another client's transaction, as any
    client of PgBouncer may at any moment.

    Afterwards the session's held cursors and prepared statements are dropped:
    PgBouncer keeps the session after its client leaves, and the next client
    to declare or prepare the same name there would get "already exists".
    """
    holders: list[psycopg.Connection] = []
    try:
        for _ in range(50):
            holder = _session(cluster, node)
            holders.append(holder)
            holder.execute("BEGIN")
            if holder.execute("SELECT pg_backend_pid()").fetchone() == (pid,):
                try:
                    yield
                finally:
                    holder.execute("CLOSE ALL")
                    holder.execute("DEALLOCATE ALL")
                    holder.execute("COMMIT")
                return
        raise AssertionError(f"no client of PgBouncer got the server session {pid}")
    finally:
        for holder in holders:
            holder.close()


def test_a_held_cursor_is_gone_once_another_client_has_its_session(bouncers: Cluster) -> None:
    """W007: what QuerySet.iterator() does without DISABLE_SERVER_SIDE_CURSORS."""
    with _session(bouncers, "replica_1") as conn:
        # What psycopg sends for Django's named cursor in autocommit mode: WITH
        # HOLD, so that the cursor outlives its transaction in the server session.
        conn.execute(
            "DECLARE _django_curs_w007 NO SCROLL CURSOR WITH HOLD FOR"
            " SELECT n, pg_backend_pid() FROM generate_series(1, 100) AS n"
        )
        rows = conn.execute("FETCH FORWARD 10 FROM _django_curs_w007").fetchall()
        assert len(rows) == 10
        with (
            _holding(bouncers, "replica_1", rows[0][1]),
            pytest.raises(psycopg.errors.InvalidCursorName),
        ):
            conn.execute("FETCH FORWARD 10 FROM _django_curs_w007")


def test_a_prepared_statement_is_gone_once_another_client_has_its_session(
    bouncers: Cluster,
) -> None:
    """W008: server-side binding with a prepare_threshold."""
    params = _through(bouncers, "replica_1")
    with psycopg.connect(**params, autocommit=True, prepare_threshold=0) as conn:
        query = "SELECT %s::int, pg_backend_pid()"
        row = conn.execute(query, [1]).fetchone()  # prepared, in that server session
        assert row is not None
        with (
            _holding(bouncers, "replica_1", row[1]),
            pytest.raises(psycopg.errors.InvalidSqlStatementName),
        ):
            conn.execute(query, [2])
