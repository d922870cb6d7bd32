"""PgBouncer (transaction pooling) in front of the nodes: the cluster tool's
instances, and what the health probes must not leave on PgBouncer's server
connections.

The rest of the suite's PgBouncer coverage is the tests marked ``pgbouncer``,
which ``make test`` runs a second time with every alias through PgBouncer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import psycopg
import pytest

from replica_router.health.probe import ProbeConnections, _select
from replica_router.testing.cluster import PRIMARY, Cluster
from replica_router.testing.pgbouncer import PgBouncer
from replica_router.testing.processes import process_alive


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


# -- the cluster tool's PgBouncers ---------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A one-replica cluster behind PgBouncer that these tests may kill and tear down."""
    cluster = Cluster(tempfile.mkdtemp(prefix="own-pgbouncer-"))
    cluster.up(replicas=1, pgbouncer=True)
    yield cluster
    cluster.down()


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replica_router.testing.cluster", *args, "--dir", str(cluster.dir)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "REPLICA_ROUTER_CLUSTER_DIR"},
    )


def test_env_and_status_report_each_pgbouncer(own_cluster: Cluster) -> None:
    env = dict(line.split("=", 1) for line in _cli(own_cluster, "env").stdout.splitlines())
    primary = own_cluster.pgbouncer_port(PRIMARY)
    replica = own_cluster.pgbouncer_port("replica_1")
    assert env["PGBOUNCER_DATABASE_URL"] == f"postgres://postgres@127.0.0.1:{primary}/app"
    assert env["PGBOUNCER_REPLICA_URLS"] == f"postgres://postgres@127.0.0.1:{replica}/app"
    assert env["DATABASE_URL"].endswith(f":{own_cluster.port(PRIMARY)}/app")
    status = _cli(own_cluster, "status").stdout
    assert f"{replica} up" in status
    # Transaction pooling: two transactions of one client, two server sessions
    # (one held by another client meanwhile).
    with _session(own_cluster, "replica_1") as first, _session(own_cluster, "replica_1") as other:
        before = first.execute("SELECT pg_backend_pid()").fetchone()
        with other.transaction():
            assert other.execute("SELECT pg_backend_pid()").fetchone() == before
            assert first.execute("SELECT pg_backend_pid()").fetchone() != before


def test_a_killed_node_leaves_its_pgbouncer_accepting_connections(own_cluster: Cluster) -> None:
    bouncer = own_cluster.pgbouncer("replica_1")
    assert _cli(own_cluster, "kill", "replica_1").returncode == 0
    assert bouncer.is_up()
    # What a client of PgBouncer then gets: a connection, and an error from
    # PgBouncer (SQLSTATE 08P01) instead of rows.
    with pytest.raises(psycopg.OperationalError) as failed, _session(own_cluster, "replica_1") as c:
        c.execute("SELECT 1")
    assert getattr(failed.value, "sqlstate", None) in {"08P01", None}
    assert _cli(own_cluster, "start", "replica_1").returncode == 0
    with _session(own_cluster, "replica_1") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_down_stops_every_pgbouncer(own_cluster: Cluster) -> None:
    pids = [bouncer.pid() for bouncer in own_cluster.pgbouncers.values()]
    assert all(pids)
    own_cluster.down()
    assert not any(process_alive(pid) for pid in pids if pid is not None)
    assert not own_cluster.dir.exists()


def test_pgbouncer_needs_a_port_of_its_own() -> None:
    with pytest.raises(ValueError, match="port of its own"):
        PgBouncer("/tmp", "primary", port=5432, server_port=5432)
