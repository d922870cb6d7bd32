"""The health monitor against real replicas that really lag, die and get promoted.

What is guarded against: reads served by a replica that is far behind, dead,
promoted, or part of another cluster; replicas flapping back into rotation on
one lucky probe; and (the classic flaw of time-based lag) an idle primary
making every replica look late.

Timing is counted in probe cycles, never in seconds: "within 2 intervals"
means "within 2 monitor cycles of the fault". A lag in seconds is asserted only
where the monitor's own rule fixes it (a replica in rotation could not pass
MAX_LAG_SECONDS before its next probe; a caught-up replica lags 0), never as a
bound on how fast this machine replays or probes.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from django.conf import settings
from django.db import connections, router
from django.db.models.signals import pre_migrate
from django.test import override_settings

from replica_router import NoReplicaAvailable
from replica_router.conf import parse_settings
from replica_router.health import NodeStatus, Snapshot, State, policy
from replica_router.health.monitor import Monitor
from replica_router.health.probe import ProbeConnections
from replica_router.runtime import get_monitor
from replica_router.signals import replica_state_changed
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.polling import wait_for
from testbed.testapp.models import Author
from tests.support.factories import AuthorFactory

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.5, "RECOVERY_CHECKS": 2}


def routed(n: int) -> Counter[str]:
    return Counter(router.db_for_read(Author) for _ in range(n))


def node(alias: str):
    monitor = get_monitor()
    assert monitor is not None
    return monitor.snapshot.node(alias)


@pytest.fixture
def health(request) -> Iterator[Monitor]:
    """A running monitor with fast probes; extra settings from @pytest.mark.parametrize
    are not needed: tests override further inside."""
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **FAST}):
        router.db_for_read(Author)  # the first routed read starts the monitor
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        yield monitor


@pytest.fixture
def monitor_with(replica_cluster: Cluster) -> Iterator[Callable[..., Monitor]]:
    """Start a monitor with settings of the test's choosing.

    The replicas replay the last test's writes first: with rare probes, lag at
    the first probe would keep a replica out of rotation for the whole test.
    """
    stack = []

    def start(**overrides) -> Monitor:
        replica_cluster.wait_replayed()
        ctx = override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **FAST, **overrides})
        ctx.enable()
        stack.append(ctx)
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        return monitor

    yield start
    for ctx in reversed(stack):
        ctx.disable()


@pytest.fixture
def state_changes() -> Iterator[list[tuple[str, str, str, str]]]:
    seen: list[tuple[str, str, str, str]] = []

    def receiver(sender, alias, old_state, new_state, reason, **kwargs):
        seen.append((alias, old_state, new_state, reason))

    replica_state_changed.connect(receiver, weak=False)
    yield seen
    replica_state_changed.disconnect(receiver)


@db
def test_the_monitor_starts_on_the_first_routed_read_not_before(replica_cluster: Cluster):
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **FAST}):
        monitor = get_monitor()
        assert monitor is not None
        assert not monitor.running
        router.db_for_write(Author)
        assert not monitor.running
        router.db_for_read(Author)
        assert monitor.running
        # The first read waited for the first cycle, so it saw real states.
        assert all(n.state is State.HEALTHY for n in monitor.snapshot.nodes)


@db
def test_reads_during_migrate_stay_on_the_primary_and_start_no_monitor():
    seen = []

    def read_during_migrate(**kwargs):
        seen.append((router.db_for_read(Author), get_monitor().running))

    pre_migrate.connect(read_during_migrate, weak=False)
    try:
        with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **FAST}):
            from django.core.management import call_command

            call_command("migrate", database="default", verbosity=0)
            assert not get_monitor().running
    finally:
        pre_migrate.disconnect(read_during_migrate)
    assert seen and set(seen) == {("default", False)}


@db
def test_a_replica_held_behind_leaves_rotation_and_returns_after_good_probes(
    monitor_with, pause_replica, replica_cluster: Cluster, state_changes
):
    replica_cluster.wait_replayed()
    monitor = monitor_with(MAX_LAG_BYTES=1024)
    wait_for(lambda: node("replica_1").in_rotation and node("replica_2").in_rotation)
    assert set(routed(10)) == {"replica_1", "replica_2"}

    pause_replica("replica_1")
    AuthorFactory.create_batch(30)  # well over 1 KiB of WAL the replica cannot replay
    cycles_at_fault = monitor.cycles
    wait_for(lambda: not node("replica_1").in_rotation)
    # One cycle may have been probing already when the writes landed.
    assert monitor.cycles - cycles_at_fault <= 2
    assert node("replica_1").state is State.LAGGING
    assert "paused" in node("replica_1").reason
    assert node("replica_1").lag_bytes > 1024
    assert routed(20) == {"replica_2": 20}

    replica_cluster.resume("replica_1")
    cycles_at_resume = monitor.cycles
    wait_for(lambda: node("replica_1").in_rotation)
    # Hysteresis: RECOVERY_CHECKS (2) good probes, not the first lucky one.
    assert monitor.cycles - cycles_at_resume >= 2
    assert node("replica_1").state is State.HEALTHY
    assert set(routed(10)) == {"replica_1", "replica_2"}
    transitions = [(a, old, new) for a, old, new, _ in state_changes if a == "replica_1"]
    assert transitions == [
        ("replica_1", "unknown", "healthy"),  # the first probe
        ("replica_1", "healthy", "lagging"),
        ("replica_1", "lagging", "healthy"),
    ]


@db
def test_time_lag_under_apply_delay_takes_a_replica_out(
    monitor_with, delay_replica, replica_cluster: Cluster
):
    # 1.5 s leaves room for the probe gap (0.2 s + 0.5 s): replica_1's
    # milliseconds of lag under the same writes keep it in rotation.
    monitor = monitor_with(MAX_LAG_SECONDS=1.5)
    delay_replica("replica_2", 3)
    gap = FAST["CHECK_INTERVAL"] + FAST["CHECK_TIMEOUT"]
    # replica_2 in each snapshot seen while it was in rotation.
    kept: dict[datetime, NodeStatus] = {}
    # A steady trickle of commits, each held back 3 s on replica_2.
    deadline = time.monotonic() + 30
    snapshot = monitor.snapshot
    while snapshot.node("replica_2").in_rotation and time.monotonic() < deadline:
        kept[snapshot.taken_at] = snapshot.node("replica_2")
        AuthorFactory()
        time.sleep(0.05)
        snapshot = monitor.snapshot
    # One snapshot, so that its state and its lag are the same verdict's.
    out = snapshot.node("replica_2")
    print(f"\nreplica_2 out of rotation at {out.lag_seconds} s of lag")
    assert out.state is State.LAGGING
    assert "MAX_LAG_SECONDS" in out.reason
    # The rule, not this machine's speed: out once its lag could pass
    # MAX_LAG_SECONDS by the next probe...
    assert out.lag_seconds is not None and out.lag_seconds + gap > 1.5
    # ... and not later: every snapshot that kept it in rotation measured a lag
    # that could not pass MAX_LAG_SECONDS before the next probe.
    lags = [row.lag_seconds for row in kept.values()]
    assert all(lag is None or lag + gap <= 1.5 for lag in lags), lags
    assert snapshot.node("replica_1").in_rotation


@db
def test_a_killed_replica_is_down_within_an_interval_and_gets_no_reads(
    health: Monitor, killed, replica_cluster: Cluster, caplog
):
    caplog.set_level(logging.INFO, logger="replica_router")
    killed("replica_2")
    cycles_at_fault = health.cycles
    wait_for(lambda: node("replica_2").state is State.DOWN)
    assert health.cycles - cycles_at_fault <= 2  # the cycle in flight, then the next
    assert node("replica_2").last_error
    assert routed(50) == {"replica_1": 50}
    # Real ORM reads keep working on the surviving replica.
    AuthorFactory()
    replica_cluster.wait_replayed(["replica_1"])
    assert Author.objects.count() >= 1
    assert any(
        "replica_2" in r.getMessage() and "down" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )

    replica_cluster.start("replica_2")
    replica_cluster.wait_streaming(["replica_2"])
    wait_for(lambda: node("replica_2").in_rotation, timeout=30)
    assert set(routed(10)) == {"replica_1", "replica_2"}


@db
def test_a_connection_failure_in_the_application_takes_the_replica_out_at_once(
    monitor_with, killed, state_changes, replica_cluster: Cluster
):
    # Probes so rare that only the application can notice the dead replica.
    monitor = monitor_with(CHECK_INTERVAL=60)
    connections["replica_1"].close()
    killed("replica_1")
    assert node("replica_1").in_rotation  # the monitor has not looked yet

    AuthorFactory()
    replica_cluster.wait_replayed(["replica_2"])
    # 1:1 weights: replica_1 comes up within two reads. The read routed there
    # fails to connect and is served elsewhere (the failover backend), so the
    # caller sees no error at all.
    for _ in range(4):
        assert Author.objects.count() >= 1
    assert node("replica_1").state is State.DOWN
    assert "connection failed in the application" in node("replica_1").reason
    assert routed(20) == {"replica_2": 20}
    assert ("replica_1", "healthy", "down") in [(a, o, n) for a, o, n, _ in state_changes]
    assert monitor.cycles == 1


@db
def test_an_idle_primary_makes_no_replica_lag(monitor_with, replica_cluster: Cluster):
    # A naive "age of the last replayed transaction" passes 1 s after 1 s of quiet.
    monitor = monitor_with(MAX_LAG_SECONDS=1.0)
    replica_cluster.wait_replayed()
    snapshots: list[Snapshot] = []
    cycles = monitor.cycles
    # 10 s of quiet, and 20 of the monitor's cycles in them however slowly it
    # runs (a monitor that stops cycling fails at the deadline).
    quiet_until = time.monotonic() + 10
    deadline = quiet_until + 60
    while (time.monotonic() < quiet_until or monitor.cycles - cycles < 20) and (
        time.monotonic() < deadline
    ):
        snapshots.append(monitor.snapshot)
        time.sleep(0.1)
    assert monitor.cycles - cycles >= 20
    for snapshot in snapshots:
        for replica in snapshot.replicas:
            # In rotation, so by the rule its lag could not pass MAX_LAG_SECONDS
            # before the next probe: not the seconds since the last transaction
            # (up to 10 here), at most a background WAL record (a checkpoint,
            # say) in flight.
            assert replica.state is State.HEALTHY, (replica.alias, replica.reason)
    # Caught up, a replica lags 0 s, however long the primary has been quiet.
    caught_up = {
        replica.alias
        for snapshot in snapshots
        for replica in snapshot.replicas
        if replica.lag_seconds == 0.0
    }
    assert caught_up == {"replica_1", "replica_2"}, [s.replicas for s in snapshots[-3:]]


@db
@pytest.mark.parametrize(
    ("fallback", "expected"),
    [("primary", "default"), ("least_lagged", "replica_2"), ("error", NoReplicaAvailable)],
)
def test_fallback_when_every_replica_lags(
    monitor_with, pause_replica, replica_cluster: Cluster, fallback, expected
):
    monitor_with(MAX_LAG_BYTES=1024, FALLBACK=fallback)
    pause_replica("replica_1")
    AuthorFactory.create_batch(60)  # replica_1 falls far behind
    pause_replica("replica_2")
    AuthorFactory.create_batch(20)  # replica_2 falls less far behind
    wait_for(lambda: not node("replica_1").in_rotation and not node("replica_2").in_rotation)
    wait_for(lambda: node("replica_1").lag_bytes > node("replica_2").lag_bytes > 1024)
    if expected is NoReplicaAvailable:
        with pytest.raises(NoReplicaAvailable, match="FALLBACK is 'error'"):
            router.db_for_read(Author)
    else:
        assert routed(10) == {expected: 10}


@db
def test_least_lagged_with_every_replica_dead_reads_from_the_primary(monitor_with, killed):
    monitor_with(FALLBACK="least_lagged")
    killed("replica_1")
    killed("replica_2")
    wait_for(lambda: not node("replica_1").in_rotation and not node("replica_2").in_rotation)
    assert routed(10) == {"default": 10}
    assert get_monitor().snapshot.overall == "unavailable"


@db
def test_a_promoted_replica_is_ejected_with_the_reason(
    health: Monitor, replica_cluster: Cluster, state_changes
):
    replica_cluster.promote("replica_2")
    try:
        wait_for(lambda: node("replica_2").state is State.EJECTED)
        assert "promoted" in node("replica_2").reason
        # replica_1 may still be replaying the last test's writes (lagging, out
        # of rotation) on a loaded machine; it is not what this test is about.
        wait_for(lambda: node("replica_1").in_rotation)
        assert routed(20) == {"replica_1": 20}
        # The monitor publishes the snapshot first, then sends the signal.
        ejected = ("replica_2", "healthy", "ejected")
        wait_for(lambda: ejected in [(a, o, n) for a, o, n, _ in state_changes])
    finally:
        connections["replica_2"].close_pool()
        replica_cluster.rebuild("replica_2")
    wait_for(lambda: node("replica_2").in_rotation)


def test_a_replica_of_another_cluster_is_ejected(replica_cluster: Cluster):
    """Same role, wrong data: a standby of a different primary (a copy-paste DSN)."""
    other = Cluster(tempfile.mkdtemp(prefix="other-cluster-"))
    other.up(replicas=1)
    try:
        ports = {
            "default": replica_cluster.port(PRIMARY),
            "replica_1": replica_cluster.port("replica_1"),
            "replica_2": other.port("replica_1"),
        }
        config, problems = parse_settings({"REPLICAS": ["replica_1", "replica_2"], **FAST})
        assert not problems
        monitor = Monitor(
            config=config,
            params_for=lambda alias: {
                "host": "127.0.0.1",
                "port": ports[alias],
                "user": "postgres",
                "dbname": "postgres",
            },
        )
        try:
            snapshot = monitor.run_cycle()
        finally:
            monitor.stop()
        assert snapshot.node("replica_1").state is State.HEALTHY
        assert snapshot.node("replica_2").state is State.EJECTED
        assert "another cluster" in snapshot.node("replica_2").reason
        assert snapshot.overall == "degraded"
    finally:
        other.down()


def test_a_down_replica_is_probed_with_backoff(replica_cluster: Cluster):
    """The circuit breaker: a dead host is not hammered every interval.

    The cycles run back to back on a clock of the test's own, one interval a
    cycle, so the schedule does not depend on how long a probe takes here; a
    CHECK_TIMEOUT far longer than any probe keeps every probe in its cycle."""
    config, problems = parse_settings(
        {"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 1.0, "CHECK_TIMEOUT": 10.0}
    )
    assert not problems
    probed: list[str] = []
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    def params_for(alias):
        probed.append(alias)
        port = replica_cluster.port(PRIMARY) if alias == "default" else dead_port
        return {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres"}

    now = [0.0]
    monitor = Monitor(config=config, params_for=params_for, monotonic=lambda: now[0])
    try:
        for cycle in range(32):  # 32 intervals
            now[0] = cycle * config.check_interval
            monitor.run_cycle()
    finally:
        monitor.stop()
    assert monitor.snapshot.node("replica_1").state is State.DOWN
    # The primary is probed every cycle; the dead replica after 1, 2, 4, 8, 8...
    # intervals: in cycles 0, 1, 3, 7, 15, 23 and 31.
    assert probed.count("default") == 32
    assert probed.count("replica_1") == 7


@db
def test_a_slightly_delayed_replica_after_a_quiet_spell_is_not_ejected(
    monitor_with, delay_replica, replica_cluster: Cluster
):
    """After 3 s without writes, the first commit a replica applies 0.3 s late
    must not count as 3 s of lag (the age of the last transaction it replayed)."""
    monitor = monitor_with(MAX_LAG_SECONDS=2.0)
    replica_cluster.wait_replayed()
    delay_replica("replica_1", 0.3)
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:
        assert node("replica_1").in_rotation
        time.sleep(0.05)
    cycles = monitor.cycles
    AuthorFactory()
    # 1.5 s, and at least 3 of the monitor's cycles however slowly it runs: the
    # delayed commit is probed before it is applied and after.
    watched_until = time.monotonic() + 1.5
    deadline = watched_until + 30
    seen = []
    while (time.monotonic() < watched_until or monitor.cycles - cycles < 3) and (
        time.monotonic() < deadline
    ):
        replica = node("replica_1")  # one snapshot: its state and its lag go together
        seen.append((replica.in_rotation, replica.lag_seconds))
        time.sleep(0.02)
    assert monitor.cycles - cycles >= 3  # the delayed commit was probed several times
    assert all(in_rotation for in_rotation, _ in seen), seen
    # In rotation, its lag could not pass MAX_LAG_SECONDS before the next
    # probe: far from the 3 s since the transaction before the commit.
    gap = FAST["CHECK_INTERVAL"] + FAST["CHECK_TIMEOUT"]
    assert all(lag is None or lag + gap <= 2.0 for _, lag in seen), seen


def _monitor_backends(cluster: Cluster, name: str, application_name: str) -> list[int]:
    """The pids of the monitor's sessions on a node, by their application_name."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=cluster.port(name), user="postgres", dbname="postgres"
    ) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return sorted(pid for (pid,) in rows)


def _own_monitor(cluster: Cluster, application_name: str) -> Monitor:
    config, problems = parse_settings({"REPLICAS": ["replica_1", "replica_2"], **FAST})
    assert not problems
    return Monitor(
        config=config,
        params_for=lambda alias: {
            "host": "127.0.0.1",
            "port": cluster.port(PRIMARY if alias == "default" else alias),
            "user": "postgres",
            "dbname": "postgres",
            "application_name": application_name,
        },
    )


def test_the_monitor_keeps_one_connection_per_node(replica_cluster: Cluster):
    """Probes reuse a connection: every process runs a monitor, and connecting
    afresh each interval would fork (processes x nodes) backends per interval."""
    name = "rr-test-keeps-connections"
    monitor = _own_monitor(replica_cluster, name)
    try:
        monitor.run_cycle()
        first = {
            node: _monitor_backends(replica_cluster, node, name) for node in replica_cluster.nodes
        }
        assert all(len(pids) == 1 for pids in first.values()), first
        for _ in range(3):
            assert monitor.run_cycle().overall == "ok"
        later = {
            node: _monitor_backends(replica_cluster, node, name) for node in replica_cluster.nodes
        }
        assert later == first
    finally:
        monitor.stop()
    closed = {
        node: _monitor_backends(replica_cluster, node, name) for node in replica_cluster.nodes
    }
    assert closed == {node: [] for node in replica_cluster.nodes}


def test_a_replica_restarted_between_probes_is_found_up(outage: Cluster, state_changes):
    """Its kept connection is dead; the probe connects again rather than report it down."""
    name = "rr-test-restart"
    # The router's monitor, if an earlier test left one running, sees the
    # restart too and would announce its own "down".
    router_monitor = get_monitor()
    if router_monitor is not None:
        router_monitor.stop()
    monitor = _own_monitor(outage, name)
    try:
        assert monitor.run_cycle().node("replica_1").state is State.HEALTHY
        outage.stop("replica_1")
        outage.start("replica_1")
        # Streaming and caught up again, so that only the dead kept connection
        # could make this probe fail.
        outage.wait_streaming()
        outage.wait_replayed()
        snapshot = monitor.run_cycle()
        assert snapshot.node("replica_1").state is State.HEALTHY, snapshot.node("replica_1")
        assert ("replica_1", "healthy", "down") not in {c[:3] for c in state_changes}
        assert len(_monitor_backends(outage, "replica_1", name)) == 1
    finally:
        monitor.stop()


def test_a_forked_child_leaves_the_parents_probe_connections_alone(replica_cluster: Cluster):
    """Closing in a child (as a fork-restarted monitor does) must not end the
    parent's sessions: they share the sockets."""
    import os
    import warnings

    name = "rr-test-fork"
    monitor = _own_monitor(replica_cluster, name)
    try:
        monitor.run_cycle()
        before = _monitor_backends(replica_cluster, PRIMARY, name)
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads; the child
            # here only closes connections and exits.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    monitor.stop()
                status = 0
            finally:
                os._exit(status)
        assert os.waitpid(pid, 0)[1] == 0, "the child failed to let go of the connections"
        assert monitor.run_cycle().overall == "ok"
        assert _monitor_backends(replica_cluster, PRIMARY, name) == before
    finally:
        monitor.stop()


def test_a_monitor_in_an_exiting_process_stops_without_an_error(replica_cluster: Cluster):
    """A gunicorn worker told to stop exits while its monitor's thread still runs:
    the thread pool takes no more work then. The monitor stops, logging nothing."""
    import subprocess
    import sys
    import textwrap

    ports = {
        "default": replica_cluster.port(PRIMARY),
        "replica_1": replica_cluster.port("replica_1"),
    }
    script = textwrap.dedent(
        f"""
        import concurrent.futures.thread, logging, time
        logging.basicConfig(level=logging.ERROR)
        from replica_router.conf import parse_settings
        from replica_router.health.monitor import Monitor

        config, _ = parse_settings({{"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 0.02}})
        ports = {ports!r}
        monitor = Monitor(config=config, params_for=lambda alias: {{
            "host": "127.0.0.1", "port": ports[alias], "user": "postgres", "dbname": "postgres"}})
        monitor.start()
        concurrent.futures.thread._shutdown = True  # what interpreter exit sets first
        deadline = time.monotonic() + 10
        while monitor.running and time.monotonic() < deadline:
            time.sleep(0.02)
        print("stopped" if not monitor.running else "still running")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped", result.stdout
    assert "failed" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@db
def test_recovery_conflicts_are_counted_per_replica_with_a_rate(
    monitor_with, provoke_conflicts, replica_cluster: Cluster
):
    # A hot standby that cancels reads conflicting with WAL replay: the
    # operator must see how many, and how fast, on the replica that does it.
    monitor = monitor_with()
    wait_for(lambda: node("replica_1").recovery_conflicts_per_second is not None)
    before = node("replica_1").recovery_conflicts
    assert before is not None and node("replica_1").recovery_conflicts_per_second == 0.0

    counted = provoke_conflicts("replica_1")

    assert counted > before
    wait_for(
        lambda: (
            node("replica_1").recovery_conflicts >= counted
            and node("replica_1").recovery_conflicts_per_second > 0
        )
    )
    # Conflicts are only counted, never a reason to leave rotation (docs/health.md).
    assert node("replica_1").in_rotation
    assert node("replica_1").state is State.HEALTHY
    replica_2 = node("replica_2")
    assert replica_2.recovery_conflicts is not None
    assert replica_2.recovery_conflicts_per_second is not None
    primary = monitor.snapshot.primary
    assert primary.recovery_conflicts is None  # only a standby has recovery conflicts
    assert primary.recovery_conflicts_per_second is None
    public = monitor.snapshot.as_dict(topology=False)["nodes"][1]
    assert public["recovery_conflicts"] == node("replica_1").recovery_conflicts


@pytest.fixture
def plain_role(replica_cluster: Cluster) -> Iterator[str]:
    """A login role with no pg_monitor: what a site's own database user often is."""
    replica_cluster.query(PRIMARY, "CREATE ROLE replica_router_plain LOGIN")
    yield "replica_router_plain"
    replica_cluster.query(PRIMARY, "DROP ROLE replica_router_plain")


def test_without_pg_monitor_an_idle_caught_up_replica_has_no_lag(replica_cluster, plain_role):
    # Such a role sees the WAL receiver's row with a NULL status: not known,
    # rather than not streaming (which would measure lag by the age of the
    # last transaction replayed, and eject an idle replica on a quiet site).
    replica_cluster.wait_replayed()
    probes = ProbeConnections()
    try:
        found = {
            name: probes.probe(
                name,
                {
                    "host": "127.0.0.1",
                    "port": replica_cluster.port(name),
                    "dbname": "postgres",
                    "user": plain_role,
                },
                timeout=5.0,
            )
            for name in (PRIMARY, "replica_1")
        }
    finally:
        probes.close()
    replica = found["replica_1"]
    assert replica.ok and replica.in_recovery
    assert replica.streaming is None
    assert policy.lag_seconds(replica, found[PRIMARY], "replica_1") == 0.0
