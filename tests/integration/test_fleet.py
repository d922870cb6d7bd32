"""One prober per cluster, measured on real gunicorn workers (issue 15).

The failure guarded against: every worker of every host runs its own health
monitor, and each keeps one probe connection per node, so a site of 8 hosts
with 8 workers holds 64 monitor connections on each replica and probes it 64
times a second. With ``HEALTH_SHARING = "host"`` (files on one host) or
``"cache"`` (Redis, across hosts) only the holder of a lease probes.

Everything is real: gunicorn masters with sync workers serving
``testbed/fleet_site`` (``testbed/fleet``), the cluster's PostgreSQL servers, a
redis-server. The counts are ``pg_stat_activity`` rows on each node whose
``application_name`` is the monitor's; the times are each worker's own record
of its transitions, on this host's clock. The figures are printed (``-s``);
bench/bench_fleet.py reports them. No test asserts a time: how soon is counted
in the prober's probe cycles (its published snapshots, testbed/fleet/store.py).
"""

from __future__ import annotations

import pytest
from django.db import connections

from replica_router import runtime
from replica_router.testing.cluster import Cluster
from replica_router.testing.redis_server import RedisServer
from testbed.fleet.connections import per_node, settle_connections
from testbed.fleet.hosts import all_states, cache_prefix, fleets
from testbed.fleet.load import Writer, seed
from testbed.fleet.outage import measure_store_outage
from testbed.fleet.rotation import measure_out_of_rotation
from testbed.fleet.takeover import measure_death_during_takeover, measure_takeover

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

INTERVAL = 1.0
TIMING = {"CHECK_INTERVAL": INTERVAL, "CHECK_TIMEOUT": 0.5}
WORKERS = 8
#: Two "hosts" of four workers each, for the cache mode.
TWO_HOSTS = (("host-a", WORKERS // 2), ("host-b", WORKERS // 2))
ONE_HOST = (("host-a", WORKERS),)


@pytest.fixture
def dbname(replica_cluster: Cluster) -> str:
    """The test database, with one row to read; the workers use it too."""
    # This process must run no monitor of its own: its connections would count.
    if runtime.current is not None and runtime.current.monitor is not None:
        runtime.current.monitor.stop()
    name = connections["default"].settings_dict["NAME"]
    seed(replica_cluster, name)
    return name


def sharing(mode: str, redis_url: str) -> tuple[tuple[tuple[str, int], ...], dict[str, object]]:
    """The fleets and settings of a mode: one host of 8 workers, or (cache)
    two hosts of 4 on one Redis, with a key prefix of their own."""
    if mode == "cache":
        return TWO_HOSTS, {
            "HEALTH_SHARING": "cache",
            "REDIS_URL": redis_url,
            "CACHE_PREFIX": cache_prefix(),
            **TIMING,
        }
    return ONE_HOST, {"HEALTH_SHARING": mode, **TIMING}


@db
@pytest.mark.parametrize(("mode", "expected"), [("process", WORKERS), ("host", 1)])
def test_monitor_connections_per_node_on_one_host(
    replica_cluster: Cluster, dbname: str, redis_server: str, mode: str, expected: int
):
    """8 workers on one host: 8 monitor connections per node each probing for
    itself ("process", which shows the count does see every worker), 1 with
    "host"."""
    groups, settings = sharing(mode, redis_server)
    with fleets(*groups, database=dbname, **settings) as started:
        settled = settle_connections(replica_cluster, dbname, expected, interval=INTERVAL)
        probing = sum(s["probing_here"] for s in all_states(started).values())
    print(f"\nfleet {mode}: {WORKERS} workers, monitor connections {per_node(settled.samples)}")
    assert per_node(settled.samples) == {node: {expected} for node in replica_cluster.nodes}
    assert probing == expected


@db
def test_two_hosts_on_one_redis_hold_one_monitor_connection_per_node(
    replica_cluster: Cluster, dbname: str, redis_server: str
):
    groups, settings = sharing("cache", redis_server)
    with fleets(*groups, database=dbname, **settings) as started:
        settled = settle_connections(replica_cluster, dbname, 1, interval=INTERVAL)
        states = all_states(started)
    print(f"\nfleet cache, 2 hosts x 4 workers: monitor connections {per_node(settled.samples)}")
    assert per_node(settled.samples) == {node: {1} for node in replica_cluster.nodes}
    assert sum(s["probing_here"] for s in states.values()) == 1
    # Every worker of both hosts routes by the one prober's snapshot.
    assert len({(s["prober"]["host"], s["prober"]["pid"]) for s in states.values()}) == 1
    assert all(s["rotation"] == ["replica_1", "replica_2"] for s in states.values())


@db
@pytest.mark.parametrize("mode", ["host", "cache"])
def test_a_killed_replica_leaves_rotation_in_every_worker_within_two_probe_cycles(
    replica_cluster: Cluster, dbname: str, redis_server: str, killed, mode: str
):
    groups, settings = sharing(mode, redis_server)
    with fleets(*groups, database=dbname, **settings) as started:
        settle_connections(replica_cluster, dbname, 1, interval=INTERVAL, samples=1)
        out = measure_out_of_rotation(started, "replica_1", lambda: killed("replica_1"))
    print(
        f"\nfleet {mode}: killed replica_1 out of rotation in all {len(out.seconds)} workers "
        f"after {out.last:.2f} s (median {out.median:.2f} s), interval {INTERVAL:g} s; "
        f"{out.cycles_still_in} of the prober's cycles after the kill still had it in"
    )
    assert len(out.seconds) == WORKERS
    # Counted in probe cycles, not seconds: the cycle under way at the kill may
    # have probed it alive; the next one, begun after the kill, finds it dead,
    # and the prober publishes it out for every worker.
    assert out.published_out, out.cycles
    assert out.cycles_still_in <= 1, out.after_fault


@db
def test_a_paused_replica_leaves_rotation_in_every_worker(
    replica_cluster: Cluster, dbname: str, redis_server: str, pause_replica
):
    """Replay paused while the primary commits ten times a second: the lag
    grows until, with the probe gap, it would pass MAX_LAG_SECONDS before the
    next probe; the time is measured and printed, as the single-process rule
    (tests/integration/test_health.py) applies unchanged."""
    max_lag = 2.0
    groups, settings = sharing("host", redis_server)
    with (
        Writer(replica_cluster, dbname),
        fleets(*groups, database=dbname, MAX_LAG_SECONDS=max_lag, **settings) as started,
    ):
        settle_connections(replica_cluster, dbname, 1, interval=INTERVAL, samples=1)
        out = measure_out_of_rotation(started, "replica_1", lambda: pause_replica("replica_1"))
    gap = TIMING["CHECK_INTERVAL"] + TIMING["CHECK_TIMEOUT"]
    print(
        f"\nfleet host: paused replica_1 out of rotation in all {len(out.seconds)} workers "
        f"after {out.last:.2f} s (median {out.median:.2f} s); it leaves once its lag plus "
        f"the probe gap {gap:g} s passes MAX_LAG_SECONDS {max_lag:g}, from "
        f"{max_lag - gap:g} s of lag"
    )
    assert len(out.seconds) == WORKERS


@db
@pytest.mark.parametrize("mode", ["host", "cache"])
def test_another_worker_takes_over_when_the_prober_is_killed(
    replica_cluster: Cluster, dbname: str, redis_server: str, mode: str
):
    """How soon is a figure (bench/bench_fleet.py); what is asserted is that
    another worker takes over, probes from its own cycles, and no read fails."""
    groups, settings = sharing(mode, redis_server)
    with fleets(*groups, database=dbname, **settings) as started:
        settle_connections(replica_cluster, dbname, 1, interval=INTERVAL, samples=1)
        takeover = measure_takeover(started, interval=INTERVAL)
        # The new prober alone probes, on a connection of its own per node.
        after = settle_connections(replica_cluster, dbname, 1, interval=INTERVAL)
    print(
        f"\nfleet {mode}: prober {takeover.killed} SIGKILLed, {takeover.new_prober} took over "
        f"after {takeover.seconds:.2f} s (seen after {takeover.observed_seconds:.2f} s); "
        f"{len(takeover.failures)} of {takeover.reads} reads failed"
    )
    assert takeover.new_prober != takeover.killed
    # It publishes snapshots of its own probe cycles, each taken once it held
    # the lease: never the dead prober's snapshot passed on, nor a view of its
    # own from before.
    mine = takeover.new_prober_cycles
    assert mine, takeover.cycles
    assert all(cycle.taken_at >= takeover.new_prober_since for cycle in mine), (
        takeover.new_prober_since,
        mine,
    )
    assert takeover.failures == []
    assert takeover.reads > 0
    assert per_node(after.samples) == {node: {1} for node in replica_cluster.nodes}


@db
@pytest.mark.parametrize("mode", ["host", "cache"])
def test_a_replica_that_dies_during_a_takeover_is_taken_out_by_the_first_read_sent_there(
    replica_cluster: Cluster, dbname: str, redis_server: str, killed, mode: str
):
    """The prober is SIGKILLed, and replica_1 dies a moment later, while no
    process probes. Readers still route by the last snapshot, which has it in
    rotation: the first read sent there fails over and reports it, and the
    other workers take it out at their next turn, before any new prober has
    probed.
    The new prober starts with a probe of its own, not with the dead holder's
    opinion, so nothing brings it back.

    A CHECK_TIMEOUT of three times the usual makes the lease last 2
    intervals, so that the reports have time to act before a takeover: without
    them, the workers would learn of the death only from the new prober."""
    groups, settings = sharing(mode, redis_server)
    settings["CHECK_TIMEOUT"] = 3 * TIMING["CHECK_TIMEOUT"]
    with fleets(*groups, database=dbname, **settings) as started:
        settle_connections(replica_cluster, dbname, 1, interval=INTERVAL, samples=1)
        death = measure_death_during_takeover(started, "replica_1", killed, interval=INTERVAL)
    print(
        f"\nfleet {mode}: prober SIGKILLed, replica_1 killed {INTERVAL / 5:g} s later; "
        f"out of rotation in all {len(death.out_after)} workers after {death.last_out:.2f} s; "
        f"{len(death.sent_there)} of {death.reads} reads sent there meanwhile, all failed "
        f"over, {len(death.takeover.failures)} failed; a new prober took over after "
        f"{death.took_over:.2f} s"
    )
    assert death.takeover.failures == []
    assert death.served_there == []
    assert [read for read in death.sent_there if read[0] < death.takeover.new_prober_since], (
        "no read was sent there before the takeover"
    )
    # The report reached the others: a worker that sent no read there took it
    # out while no process probed. Not every worker: one the machine does not
    # schedule for a while looks at the store late, and then may learn of the
    # death from the new prober instead (seen once, with 1 of 7 workers late).
    senders = {read[1] for read in death.sent_there}
    by_report = [
        pid
        for pid, after in death.out_after.items()
        if pid not in senders and after < death.took_over
    ]
    assert by_report, (
        f"workers took replica_1 out after {sorted(death.out_after.values())} s, "
        f"the new prober took over after {death.took_over:.2f} s"
    )
    # Once out everywhere, nothing brings it back: not the new prober's first
    # snapshot, not the dead holder's last one.
    assert death.sent_after_out == []


@db
def test_with_redis_down_every_worker_probes_for_itself_and_no_read_fails(
    replica_cluster: Cluster, dbname: str
):
    with RedisServer() as redis:
        groups, settings = sharing("cache", redis.url())
        with fleets(*groups, database=dbname, **settings) as started:
            settle_connections(replica_cluster, dbname, 1, interval=INTERVAL, samples=1)
            outage = measure_store_outage(
                started, redis, replica_cluster, dbname, interval=INTERVAL
            )
    print(
        f"\nfleet cache, Redis stopped: {per_node(outage.down)} monitor connections per node "
        f"after {outage.fallback_seconds:.2f} s ({outage.workers_in_fallback} workers in "
        f"fallback); Redis back: {per_node(outage.after)} after {outage.recovery_seconds:.2f} s; "
        f"{len(outage.failures)} of {outage.reads} reads failed"
    )
    assert per_node(outage.down) == {node: {WORKERS} for node in replica_cluster.nodes}
    assert outage.workers_in_fallback == WORKERS
    assert per_node(outage.after) == {node: {1} for node in replica_cluster.nodes}
    assert outage.failures == []
    assert outage.reads > 0
