"""The local cluster itself: real servers, real replication, real faults.

Everything the library promises is proven on this cluster, so a cluster that
only pretends to replicate (or to pause, or to die) would make every other
test meaningless.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import psycopg
import pytest

from replica_router.testing.cluster import PRIMARY, Cluster, ClusterError
from replica_router.testing.pgbouncer import PgBouncer
from replica_router.testing.processes import children, process_alive, process_state


def _table(cluster: Cluster) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    cluster.query(PRIMARY, f"CREATE TABLE {name} (id int PRIMARY KEY)")
    return name


def _count(cluster: Cluster, node: str, table: str) -> int:
    return int(cluster.query(node, f"SELECT count(*) FROM {table}"))


def _server_processes(directory: Path) -> list[int]:
    marker = str(directory).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_a_row_written_on_the_primary_reaches_every_replica(replica_cluster: Cluster) -> None:
    table = _table(replica_cluster)
    replica_cluster.query(PRIMARY, f"INSERT INTO {table} VALUES (1), (2), (3)")
    replica_cluster.wait_replayed()
    for name in replica_cluster.replicas:
        assert _count(replica_cluster, name, table) == 3
        assert replica_cluster.query(name, "SELECT pg_is_in_recovery()") is True
    assert replica_cluster.query(PRIMARY, "SELECT pg_is_in_recovery()") is False


def test_replicas_stream_under_their_alias(replica_cluster: Cluster) -> None:
    assert replica_cluster.streaming() == set(replica_cluster.replicas)


def test_replicas_refuse_writes(replica_cluster: Cluster) -> None:
    table = _table(replica_cluster)
    replica_cluster.wait_replayed()
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        replica_cluster.query("replica_1", f"INSERT INTO {table} VALUES (1)")


def test_pause_freezes_replay_while_the_primary_moves_on(
    replica_cluster: Cluster, pause_replica
) -> None:
    table = _table(replica_cluster)
    replica_cluster.wait_replayed()
    pause_replica("replica_1")
    frozen = replica_cluster.replay_lsn("replica_1")
    before = replica_cluster.primary_lsn()

    replica_cluster.query(PRIMARY, f"INSERT INTO {table} SELECT generate_series(1, 100)")
    replica_cluster.wait_replayed(["replica_2"])  # the other replica is not held back

    assert replica_cluster.primary_lsn() != before
    assert replica_cluster.replay_lsn("replica_1") == frozen
    assert replica_cluster.lag_bytes("replica_1", replica_cluster.primary_lsn()) > 0
    assert _count(replica_cluster, "replica_1", table) == 0
    assert _count(replica_cluster, "replica_2", table) == 100

    replica_cluster.resume("replica_1")
    replica_cluster.wait_replayed(["replica_1"])
    assert _count(replica_cluster, "replica_1", table) == 100


def test_paused_context_manager_resumes_on_error(replica_cluster: Cluster) -> None:
    with pytest.raises(ZeroDivisionError), replica_cluster.paused("replica_2"):
        assert replica_cluster.is_paused("replica_2")
        1 / 0  # noqa: B018
    assert not replica_cluster.is_paused("replica_2")


def test_pause_replica_fixture_holds_a_replica_behind(replica_cluster: Cluster, pause_replica):
    table = _table(replica_cluster)
    replica_cluster.wait_replayed()
    pause_replica("replica_2")
    replica_cluster.query(PRIMARY, f"INSERT INTO {table} VALUES (1)")
    replica_cluster.wait_replayed(["replica_1"])
    assert _count(replica_cluster, "replica_2", table) == 0


def test_apply_delay_holds_commits_back(replica_cluster: Cluster, delay_replica) -> None:
    table = _table(replica_cluster)
    replica_cluster.wait_replayed()
    delay_replica("replica_1", 1.5)
    replica_cluster.query(PRIMARY, f"INSERT INTO {table} VALUES (1)")
    replica_cluster.wait_replayed(["replica_2"])
    assert _count(replica_cluster, "replica_1", table) == 0
    replica_cluster.wait_replayed(["replica_1"], timeout=15)
    assert _count(replica_cluster, "replica_1", table) == 1


def test_faults_name_only_replicas(replica_cluster: Cluster) -> None:
    with pytest.raises(ClusterError, match="not a replica"):
        replica_cluster.pause(PRIMARY)
    with pytest.raises(ClusterError, match="No node named"):
        replica_cluster.kill("replica_9")


def test_up_on_a_running_cluster_is_a_no_op(replica_cluster: Cluster) -> None:
    pids = {name: replica_cluster.pid(name) for name in replica_cluster.nodes}
    assert replica_cluster.up(len(replica_cluster.replicas)) is False
    assert {name: replica_cluster.pid(name) for name in replica_cluster.nodes} == pids


@pytest.fixture(scope="module")
def own_cluster():
    """A second, one-replica cluster that these tests may kill and tear down."""
    cluster = Cluster(tempfile.mkdtemp(prefix="own-cluster-"))
    cluster.up(replicas=1)
    yield cluster
    cluster.down()


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replica_router.testing.cluster", *args, "--dir", str(cluster.dir)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "REPLICA_ROUTER_CLUSTER_DIR"},
    )


def test_kill_shows_the_node_down_and_start_brings_it_back(own_cluster: Cluster) -> None:
    assert _cli(own_cluster, "kill", "replica_1").returncode == 0
    status = {s.name: s for s in own_cluster.status()}
    assert status["replica_1"].up is False
    assert status["replica_1"].pid is None
    assert status[PRIMARY].up is True
    with pytest.raises(psycopg.OperationalError):
        own_cluster.query("replica_1", "SELECT 1")
    assert "replica_1   replica  " in _cli(own_cluster, "status").stdout
    assert " down " in _cli(own_cluster, "status").stdout

    assert _cli(own_cluster, "start", "replica_1").returncode == 0
    own_cluster.wait_streaming()
    assert own_cluster.query("replica_1", "SELECT pg_is_in_recovery()") is True


def test_stop_primary_leaves_replicas_serving_reads(own_cluster: Cluster) -> None:
    assert _cli(own_cluster, "stop-primary").returncode == 0
    assert own_cluster.is_up(PRIMARY) is False
    assert own_cluster.query("replica_1", "SELECT 1") == 1
    own_cluster.start(PRIMARY)
    own_cluster.wait_streaming()


def test_env_prints_urls_for_every_node(own_cluster: Cluster) -> None:
    out = _cli(own_cluster, "env").stdout
    primary_port, replica_port = own_cluster.port(PRIMARY), own_cluster.port("replica_1")
    assert f"DATABASE_URL=postgres://postgres@127.0.0.1:{primary_port}/app" in out
    assert f"REPLICA_URLS=postgres://postgres@127.0.0.1:{replica_port}/app" in out


def test_servers_listen_on_loopback_only(own_cluster: Cluster) -> None:
    assert own_cluster.query(PRIMARY, "SHOW listen_addresses") == "127.0.0.1"
    assert own_cluster.query("replica_1", "SHOW listen_addresses") == "127.0.0.1"


def test_up_on_a_running_cluster_says_so_and_prints_the_status(own_cluster: Cluster) -> None:
    # `make cluster-up` twice must not create a second cluster or fail.
    result = _cli(own_cluster, "up")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cluster already running in {own_cluster.dir}\n")
    assert "replica_1   replica  " in result.stdout


def test_status_json_describes_every_node(own_cluster: Cluster) -> None:
    # Scripts read this instead of scraping the table.
    result = _cli(own_cluster, "status", "--json")
    assert result.returncode == 0, result.stderr
    nodes = {node["name"]: node for node in json.loads(result.stdout)}
    assert nodes.keys() == {PRIMARY, "replica_1"}
    assert nodes["replica_1"]["role"] == "replica"
    assert nodes["replica_1"]["port"] == own_cluster.port("replica_1")
    assert all(node["up"] for node in nodes.values())


def test_delay_sets_and_clears_the_apply_delay(own_cluster: Cluster) -> None:
    setting = "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
    assert _cli(own_cluster, "delay", "replica_1", "1.5").returncode == 0
    assert own_cluster.query("replica_1", setting) == "1500"
    assert _cli(own_cluster, "delay", "replica_1", "0").returncode == 0
    assert own_cluster.query("replica_1", setting) == "0"


def test_freeze_leaves_clients_hanging_until_thaw(own_cluster: Cluster) -> None:
    # A hung host sends no error and no RST: an open connection waits, and a
    # new one gets no answer, for as long as the freeze lasts.
    with own_cluster.connect("replica_1") as conn, ThreadPoolExecutor(1) as pool:
        assert _cli(own_cluster, "freeze", "replica_1").returncode == 0
        try:
            assert own_cluster.is_frozen("replica_1")
            pending = pool.submit(lambda: conn.execute("SELECT 42").fetchone())
            with pytest.raises(FutureTimeout):
                pending.result(timeout=1)
            with pytest.raises(psycopg.OperationalError, match="timeout"):
                psycopg.connect(own_cluster.conninfo("replica_1"), connect_timeout=2)
        finally:
            assert _cli(own_cluster, "thaw", "replica_1").returncode == 0
        assert pending.result(timeout=10) == (42,)
    assert not own_cluster.is_frozen("replica_1")


def test_freeze_leaves_no_backend_running_while_clients_keep_connecting(
    own_cluster: Cluster,
) -> None:
    # A pooler opens server connections all the time. freeze listed the node's
    # processes before it stopped the postmaster, so a backend forked meanwhile
    # escaped it and could go on answering through the pooler; and it returned
    # before the backends it signalled had stopped. Either way the node could
    # answer a probe while "frozen" (the chaos test's "replica_1 never left
    # rotation", through PgBouncer).
    stop = threading.Event()

    def connect_again_and_again() -> None:
        while not stop.is_set():
            with contextlib.suppress(psycopg.Error):
                psycopg.connect(own_cluster.conninfo("replica_1"), connect_timeout=2).close()

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(connect_again_and_again)
        try:
            for _ in range(20):
                own_cluster.freeze("replica_1")
                try:
                    postmaster = own_cluster.pid("replica_1")
                    # Nothing of the node runs once freeze returns.
                    running = [
                        pid
                        for pid in children(postmaster)
                        if process_state(pid) not in ("T", "Z", None)
                    ]
                    assert running == [], "backends still running after freeze"
                finally:
                    own_cluster.thaw("replica_1")
                time.sleep(0.05)
        finally:
            stop.set()


def test_conflicts_makes_a_replica_cancel_conflicting_queries(own_cluster: Cluster) -> None:
    def settings() -> dict[str, str]:
        rows = own_cluster.query(
            "replica_1",
            "SELECT json_object_agg(name, setting) FROM pg_settings "
            "WHERE name IN ('hot_standby_feedback', 'max_standby_streaming_delay')",
        )
        return dict(rows)

    assert _cli(own_cluster, "conflicts", "replica_1").returncode == 0
    assert settings() == {"hot_standby_feedback": "off", "max_standby_streaming_delay": "0"}
    assert _cli(own_cluster, "conflicts", "replica_1", "--off").returncode == 0
    assert settings() == {"hot_standby_feedback": "on", "max_standby_streaming_delay": "30000"}


def test_down_leaves_no_server_process_and_no_directory(own_cluster: Cluster) -> None:
    assert _server_processes(own_cluster.dir)
    own_cluster.freeze("replica_1")  # a hung node must not keep its processes alive
    assert _cli(own_cluster, "down").returncode == 0
    deadline = time.monotonic() + 10
    while _server_processes(own_cluster.dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _server_processes(own_cluster.dir) == []
    assert not own_cluster.dir.exists()


def test_run_brings_a_cluster_up_for_a_command_and_removes_it() -> None:
    directory = Path(tempfile.mkdtemp(prefix="run-cluster-"))
    probe = (
        "import os, psycopg; "
        "urls = [os.environ['DATABASE_URL'], *os.environ['REPLICA_URLS'].split(',')]; "
        "print([psycopg.connect(u).execute('select pg_is_in_recovery()').fetchone()[0] "
        "for u in urls])"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "replica_router.testing.cluster",
            "run",
            "--dir",
            str(directory),
            "--replicas",
            "1",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "REPLICA_ROUTER_CLUSTER_DIR"},
    )
    assert result.returncode == 0, result.stderr
    assert "[False, True]" in result.stdout
    assert not directory.exists()
    assert _server_processes(directory) == []


# -- PgBouncer in front of each node (up --pgbouncer) -----------------------------


def _bouncer_session(cluster: Cluster, node: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=cluster.pgbouncer_port(node),
        user="postgres",
        dbname="postgres",
        autocommit=True,
        prepare_threshold=None,
    )


def test_up_pgbouncer_puts_one_in_front_of_each_node(own_cluster: Cluster) -> None:
    assert _cli(own_cluster, "up", "--pgbouncer").returncode == 0
    env = dict(line.split("=", 1) for line in _cli(own_cluster, "env").stdout.splitlines())
    primary = own_cluster.pgbouncer_port(PRIMARY)
    replica = own_cluster.pgbouncer_port("replica_1")
    assert env["PGBOUNCER_DATABASE_URL"] == f"postgres://postgres@127.0.0.1:{primary}/app"
    assert f"postgres://postgres@127.0.0.1:{replica}/app" in env["PGBOUNCER_REPLICA_URLS"]
    assert env["DATABASE_URL"].endswith(f":{own_cluster.port(PRIMARY)}/app")
    assert f"{replica} up" in _cli(own_cluster, "status").stdout
    # Transaction pooling: while another client holds the server session of a
    # client's last transaction, its next one runs in another.
    with (
        _bouncer_session(own_cluster, "replica_1") as first,
        _bouncer_session(own_cluster, "replica_1") as other,
    ):
        before = first.execute("SELECT pg_backend_pid()").fetchone()
        with other.transaction():
            assert other.execute("SELECT pg_backend_pid()").fetchone() == before
            assert first.execute("SELECT pg_backend_pid()").fetchone() != before


def test_a_killed_node_leaves_its_pgbouncer_accepting_connections(own_cluster: Cluster) -> None:
    own_cluster.start_pgbouncers()
    bouncer = own_cluster.pgbouncer("replica_1")
    assert _cli(own_cluster, "kill", "replica_1").returncode == 0
    assert bouncer.is_up()
    # What a client of PgBouncer then gets: a connection, and PgBouncer's error
    # (SQLSTATE 08P01) instead of rows.
    with pytest.raises(psycopg.OperationalError), _bouncer_session(own_cluster, "replica_1") as c:
        c.execute("SELECT 1")
    assert _cli(own_cluster, "start", "replica_1").returncode == 0
    with _bouncer_session(own_cluster, "replica_1") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_down_stops_every_pgbouncer() -> None:
    cluster = Cluster(tempfile.mkdtemp(prefix="down-pgbouncer-"))
    cluster.up(replicas=0, pgbouncer=True)
    pid = cluster.pgbouncer(PRIMARY).pid()
    assert pid is not None and process_alive(pid)
    assert _cli(cluster, "down").returncode == 0
    assert not process_alive(pid)
    assert not cluster.dir.exists()


def test_pgbouncer_needs_a_port_of_its_own() -> None:
    with pytest.raises(ValueError, match="port of its own"):
        PgBouncer("/tmp", "primary", port=5432, server_port=5432)
