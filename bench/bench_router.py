"""How long ``db_for_read`` takes: replica_router.ReplicaRouter against django-multidb-router.

Run with ``make bench``, which starts the local cluster and runs this with
``REPLICA_ROUTER_CLUSTER_DIR`` set (it needs ``pip install django-multidb-router``).
Routing does no I/O, but the health monitor is on, as it is by default: it
probes the real primary and replicas in its thread while the routers are timed,
so the figures are those of the hot path with health enabled. The three replica
aliases point at the cluster's replicas (two servers).

Ours is timed twice, without and with metrics (``METRICS``, which needs the
``metrics`` extra): the only difference between the two is whether the router
has its counters, so the gap is what counting costs per read.

It also prints the monitor's cost: CPU time per probe cycle with 2 replicas.

The routers run in one process, in interleaved rounds, so that drift in CPU
frequency or load hits them alike. Each round times NUMBER calls; the report gives
the best and the median round in ns per call, and ours / theirs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import django
from charts import OUT, bar_chart
from django.conf import settings
from machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replica_router.testing.cluster import PRIMARY, Cluster  # noqa: E402

REPLICAS = ["replica_1", "replica_2", "replica_3"]


def _setup() -> Cluster:
    cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
    if not cluster_dir:
        sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")
    cluster = Cluster(cluster_dir)

    def database(node: str) -> dict[str, object]:
        return {
            "ENGINE": "replica_router.backends.postgresql",
            "NAME": "app",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": cluster.port(node),
        }

    nodes = cluster.replicas
    settings.configure(
        DATABASES={
            "default": database(PRIMARY),
            **{
                alias: {**database(nodes[i % len(nodes)]), "TEST": {"MIRROR": "default"}}
                for i, alias in enumerate(REPLICAS)
            },
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        DATABASE_ROUTERS=["replica_router.ReplicaRouter"],
        # ours: equal weights, like multidb's round-robin; metrics on (timed
        # both ways below)
        REPLICA_ROUTER={"REPLICAS": REPLICAS, "METRICS": True},
        # django-multidb-router's setting
        REPLICA_DATABASES=REPLICAS,
        USE_TZ=True,
    )
    django.setup()
    return cluster


def _per_call_ns(func: Callable[[], object], number: int) -> float:
    return timeit.Timer(func).timeit(number) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()

    cluster = _setup()
    from django.contrib.auth.models import User
    from django.db import transaction
    from multidb import PinningReplicaRouter

    from replica_router import ReplicaRouter, runtime, use_primary
    from replica_router.conf import parse_settings
    from replica_router.health.monitor import Monitor
    from replica_router.runtime import get_counters, get_monitor

    ours = ReplicaRouter()
    theirs = PinningReplicaRouter()

    # Warm up: builds our routing state and multidb's replica cycle, and checks
    # that both really route to replicas.
    assert ours.db_for_read(User) in REPLICAS
    assert theirs.db_for_read(User) in REPLICAS
    monitor = get_monitor()
    assert monitor is not None and monitor.running
    assert all(n.in_rotation for n in monitor.snapshot.replicas), monitor.snapshot

    ours_read = ours.db_for_read
    theirs_read = theirs.db_for_read

    def ours_common() -> object:
        return ours_read(User)

    def theirs_common() -> object:
        return theirs_read(User)

    # With METRICS off the router has no counters: taking them away and giving
    # them back between rounds times both cases on the same routing state.
    routing = runtime.current or runtime.load()
    counters = get_counters()
    assert counters is not None, "METRICS is on"

    def ours_timed(metrics: bool) -> float:
        routing.counters = counters if metrics else None
        return _per_call_ns(ours_common, args.number)

    def replica_reads() -> int:
        from prometheus_client import REGISTRY

        return sum(
            REGISTRY.get_sample_value(
                "replica_router_reads_total", {"alias": alias, "reason": "replica"}
            )
            or 0
            for alias in REPLICAS
        )

    counted_before = replica_reads()
    results: dict[str, list[float]] = {"ours": [], "metrics": [], "multidb": []}
    for _ in range(args.rounds):
        results["ours"].append(ours_timed(False))
        results["metrics"].append(ours_timed(True))
        results["multidb"].append(_per_call_ns(theirs_common, args.number))
    counted = replica_reads() - counted_before
    # timeit runs the function NUMBER times per round; metrics must see each.
    assert counted == args.rounds * args.number, (counted, args.rounds * args.number)

    # The pinned path: every read goes to the primary under use_primary().
    pinned: dict[bool, list[float]] = {False: [], True: []}
    with use_primary():
        assert ours.db_for_read(User) == "default"
        for _ in range(args.rounds):
            for metrics in (False, True):
                pinned[metrics].append(ours_timed(metrics))

    # The in-transaction path, in a real transaction on the primary.
    in_transaction: dict[bool, list[float]] = {False: [], True: []}
    try:
        with transaction.atomic(using="default"):
            assert ours.db_for_read(User) == "default"
            for _ in range(args.rounds):
                for metrics in (False, True):
                    in_transaction[metrics].append(ours_timed(metrics))
    finally:
        routing.counters = counters

    print(
        f"db_for_read, ns per call ({args.rounds} rounds x {args.number:,} calls, "
        f"Python {sys.version.split()[0]}, Django {django.get_version()})"
    )
    print(describe(len(cluster.replicas)))
    print(f"{'':42} {'best':>8} {'median':>8}")
    rows = [
        ("multidb PinningReplicaRouter", results["multidb"]),
        ("ReplicaRouter (3 replicas)", results["ours"]),
        ("ReplicaRouter (3 replicas) + metrics", results["metrics"]),
        ("ReplicaRouter under use_primary", pinned[False]),
        ("ReplicaRouter under use_primary + metrics", pinned[True]),
        ("ReplicaRouter inside atomic()", in_transaction[False]),
        ("ReplicaRouter inside atomic() + metrics", in_transaction[True]),
    ]
    for name, timings in rows:
        print(f"{name:42} {min(timings):8.1f} {statistics.median(timings):8.1f}")
    bar_chart(
        OUT / "router.svg",
        "db_for_read, ns per call (median round; lower is better)",
        [(name, statistics.median(timings)) for name, timings in rows],
        value_label=lambda ns: f"{ns:.0f} ns",
    )
    for label, ours_timings in (("ours", results["ours"]), ("ours + metrics", results["metrics"])):
        best_ratio = min(ours_timings) / min(results["multidb"])
        median_ratio = statistics.median(ours_timings) / statistics.median(results["multidb"])
        print(f"ratio {label}/multidb: best {best_ratio:.2f}, median {median_ratio:.2f}")
    extra = statistics.median(results["metrics"]) - statistics.median(results["ours"])
    print(
        f"metrics cost {extra:+.1f} ns per read (medians); they counted all "
        f"{counted:,} reads timed with metrics on"
    )
    print(f"(health monitor on: {monitor.cycles} probe cycles ran in the background meanwhile)")

    # The monitor's own cost, measured alone: the router's monitor is stopped.
    monitor.stop()
    config, problems = parse_settings({"REPLICAS": ["replica_1", "replica_2"]})
    assert not problems
    probe_monitor = Monitor(config=config)
    probe_monitor.run_cycle()  # warm-up: thread pool, imports
    cycles = 50
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        probe_monitor.run_cycle()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    probe_monitor.stop()
    assert all(n.state.value == "healthy" for n in probe_monitor.snapshot.nodes)
    print(
        f"health monitor, primary + 2 replicas: {cpu / cycles * 1000:.2f} ms CPU "
        f"and {wall / cycles * 1000:.2f} ms wall per probe cycle ({cycles} cycles); "
        f"at CHECK_INTERVAL 1 s that is {cpu / cycles * 100:.2f} % of one core"
    )
    del cluster


if __name__ == "__main__":
    main()
