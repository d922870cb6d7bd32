"""One pooled ORM read, end to end: ReplicaRouter against django-multidb-router and no router.

Run it against the local cluster, as ``make bench`` does for bench_router.py::

    REPLICA_ROUTER_CLUSTER_DIR=/tmp/... python bench/bench_orm.py

The read is ``Author.objects.get(pk=...)`` (testbed.testapp; the bench migrates
the cluster's ``app`` database). Every alias has Django's native psycopg pool.
The set-ups:

single database
    no router; the read goes to ``default`` (the primary) through Django's own
    engine: the baseline. It is timed twice, as two set-ups that do the same
    thing: the gap between the two is the noise floor of the measurement.
replicas by .using()
    no router either; ``.using()`` names the two replicas in turn: the same
    servers as the routers below, without routing. It too is timed twice, the
    second time through other aliases of the same servers (other pools, so
    other connections and other server processes): that gap is the noise floor
    of comparing set-ups that use different connections, as all the ones below
    do. It is larger than the first floor, which compares reads on the same
    connections.
failover engine by .using()
    the same, through our aliases: the failover engine
    (``replica_router.backends.postgresql``), no router.
multidb
    django-multidb-router's ``PinningReplicaRouter`` over the two replicas,
    Django's own engine: what a multidb user runs.
ReplicaRouter
    ours over the same two replicas, as docs/ recommend: the failover engine,
    the health monitor probing every second, metrics on (when prometheus-client
    is installed), and the ``replica_router`` app installed. Its gap to
    "failover engine by .using()" is the router's own.

Two shapes of read:

per request
    the read, then what Django does when a request ends
    (``close_if_unusable_or_obsolete()`` on each of the site's aliases): the
    connection goes back to its pool, and the next read takes one out again
    (the pool checks it with an empty query first, as Django configures it).
held connection
    reads on a connection kept from one read to the next.

The set-ups take turns read by read, in a shuffled order, so that drift
in CPU frequency or load hits them alike; each read is timed on its own, in
wall time and in CPU time of the reading thread (the client's share: Django,
the router, psycopg; not the servers, not the monitor's thread). The report
gives medians over every read. The PostgreSQL servers run on this machine
(127.0.0.1) and compete with the client for its cores. The routing decision
alone, as the ORM asks for it, is timed last and set against a read.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import django
from charts import OUT, bar_chart
from django.conf import settings
from machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replica_router.testing.cluster import PRIMARY, Cluster  # noqa: E402

OURS_PRIMARY = "ours_primary"
OURS_REPLICAS = ["ours_replica_1", "ours_replica_2"]
PLAIN_REPLICAS = ["replica_1", "replica_2"]
PLAIN_REPLICAS_AGAIN = ["replica_1_again", "replica_2_again"]
POOL = {"min_size": 1, "max_size": 4, "timeout": 2}
SHAPES = {"request": "per request", "held": "held connection"}


def _setup() -> Cluster:
    cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
    if not cluster_dir:
        sys.exit("Set REPLICA_ROUTER_CLUSTER_DIR to a running cluster (make cluster-up).")
    cluster = Cluster(cluster_dir)
    nodes = cluster.replicas

    def database(node: str, engine: str) -> dict[str, object]:
        return {
            "ENGINE": engine,
            "NAME": "app",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": cluster.port(node),
            "CONN_MAX_AGE": 0,  # with a pool, Django wants 0
            "OPTIONS": {"pool": POOL},
        }

    plain, ours = "django.db.backends.postgresql", "replica_router.backends.postgresql"
    databases = {"default": database(PRIMARY, plain)}
    for i, alias in enumerate(PLAIN_REPLICAS):
        databases[alias] = database(nodes[i % len(nodes)], plain)
    for i, alias in enumerate(PLAIN_REPLICAS_AGAIN):
        databases[alias] = database(nodes[i % len(nodes)], plain)
    databases[OURS_PRIMARY] = database(PRIMARY, ours)
    for i, alias in enumerate(OURS_REPLICAS):
        databases[alias] = database(nodes[i % len(nodes)], ours)
    settings.configure(
        DATABASES=databases,
        # The app hooks nothing onto Django's own engine here: the primary's
        # engine (ours) notes writes itself.
        INSTALLED_APPS=["replica_router", "testbed.testapp"],
        DATABASE_ROUTERS=[],  # chosen per set-up
        REPLICA_ROUTER={"PRIMARY": OURS_PRIMARY, "REPLICAS": OURS_REPLICAS},
        REPLICA_DATABASES=PLAIN_REPLICAS,  # django-multidb-router's setting
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()
    return cluster


@dataclass
class Setup:
    name: str
    routers: list[object]
    #: The site's aliases: those Django looks at when a request ends.
    aliases: Sequence[str]
    read: Callable[[], object]
    #: Where its reads must be served.
    serves: set[str]
    #: shape -> wall µs of each read; shape -> thread CPU µs of each read
    wall: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SHAPES})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SHAPES})


def _versus(setup: Setup, reference: Setup, shape: str) -> str:
    """How much slower ``setup``'s median read is than ``reference``'s, wall and CPU."""
    wall = statistics.median(setup.wall[shape]) / statistics.median(reference.wall[shape])
    cpu = statistics.median(setup.cpu[shape]) / statistics.median(reference.cpu[shape])
    return f"wall {wall - 1:+.2%}, CPU {cpu - 1:+.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=4000, help="reads per set-up and shape")
    args = parser.parse_args()

    cluster = _setup()
    from django.core.management import call_command
    from django.db import connections
    from django.db import router as django_router
    from multidb import PinningReplicaRouter

    from replica_router import ReplicaRouter
    from replica_router.conf import get_config
    from replica_router.runtime import get_monitor
    from testbed.testapp.models import Author

    call_command("migrate", "testapp", database="default", verbosity=0)
    pk = Author.objects.using("default").create(name="bench").pk
    cluster.wait_replayed()

    def get() -> Author:
        return Author.objects.get(pk=pk)

    replicas = itertools.cycle(PLAIN_REPLICAS)

    def get_using() -> Author:
        return Author.objects.using(next(replicas)).get(pk=pk)

    replicas_again = itertools.cycle(PLAIN_REPLICAS_AGAIN)

    def get_using_again() -> Author:
        return Author.objects.using(next(replicas_again)).get(pk=pk)

    our_replicas = itertools.cycle(OURS_REPLICAS)

    def get_ours_using() -> Author:
        return Author.objects.using(next(our_replicas)).get(pk=pk)

    site, our_site = ["default", *PLAIN_REPLICAS], [OURS_PRIMARY, *OURS_REPLICAS]
    site_again = ["default", *PLAIN_REPLICAS_AGAIN]
    setups = [
        Setup("single database (no router)", [], ["default"], get, {"default"}),
        Setup("single database, again", [], ["default"], get, {"default"}),
        Setup("replicas by .using() (no router)", [], site, get_using, set(PLAIN_REPLICAS)),
        Setup(
            "replicas by .using(), again",
            [],
            site_again,
            get_using_again,
            set(PLAIN_REPLICAS_AGAIN),
        ),
        Setup("failover engine by .using()", [], our_site, get_ours_using, set(OURS_REPLICAS)),
        Setup(
            "multidb PinningReplicaRouter", [PinningReplicaRouter()], site, get, set(PLAIN_REPLICAS)
        ),
        Setup("ReplicaRouter", [ReplicaRouter()], our_site, get, set(OURS_REPLICAS)),
    ]
    baseline, again, using, using_again, engine, multidb, ours = setups

    def use(setup: Setup) -> None:
        django_router.routers = setup.routers

    from django.db.backends.signals import connection_created

    assert not connection_created.receivers, "a receiver would cost every checkout"

    def read_once(setup: Setup, shape: str) -> tuple[int, int, object]:
        closing = [connections[alias] for alias in setup.aliases] if shape == "request" else []
        read = setup.read
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        result = read()
        for connection in closing:  # what request_finished does
            connection.close_if_unusable_or_obsolete()
        return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu, result

    # Warm up every pool and the monitor, and check where each set-up reads.
    for setup in setups:
        use(setup)
        for shape in SHAPES:
            served = {read_once(setup, shape)[2]._state.db for _ in range(50)}  # type: ignore[attr-defined]
            assert served == setup.serves, (setup.name, served)
    monitor = get_monitor()
    assert monitor is not None and monitor.running
    assert all(node.in_rotation for node in monitor.snapshot.replicas), monitor.snapshot
    cycles = monitor.cycles

    # A read right after a read by the same set-up runs warmer (same pool, same
    # server, same code): a shuffled order gives every set-up every predecessor alike.
    rng = random.Random(8)
    order = list(setups)
    for shape in SHAPES:
        for _ in range(args.reads):
            rng.shuffle(order)
            for setup in order:
                use(setup)
                wall, cpu, _ = read_once(setup, shape)
                setup.wall[shape].append(wall / 1000)
                setup.cpu[shape].append(cpu / 1000)
        for alias in connections:
            connections[alias].close()
    cycles = monitor.cycles - cycles

    # The routing decision alone, through Django's ConnectionRouter as the ORM asks.
    decision: dict[str, float] = {}
    for setup in (baseline, multidb, ours):
        use(setup)
        timer = timeit.Timer(lambda: django_router.db_for_read(Author))
        decision[setup.name] = min(timer.repeat(repeat=5, number=100_000)) / 100_000 * 1e6
    use(baseline)

    print(describe(len(cluster.replicas)))
    print(
        f"Author.objects.get(pk=...), pooled (min {POOL['min_size']}, max {POOL['max_size']} "
        f"per alias); {args.reads:,} reads per set-up and shape, set-ups taking turns read by "
        f"read; health monitor on ({cycles} probe cycles meanwhile), metrics "
        f"{'on' if get_config().metrics else 'off (prometheus-client not installed)'}"
    )
    for shape, title in SHAPES.items():
        print(
            f"\n{title + ', µs per read:':36} {'wall median':>11} {'CPU median':>10} "
            f"{'wall / single':>13} {'CPU / single':>12}"
        )
        wall_base = statistics.median(baseline.wall[shape])
        cpu_base = statistics.median(baseline.cpu[shape])
        for setup in setups:
            wall = statistics.median(setup.wall[shape])
            cpu = statistics.median(setup.cpu[shape])
            print(
                f"  {setup.name:34} {wall:11.1f} {cpu:10.1f} "
                f"{wall / wall_base - 1:+13.2%} {cpu / cpu_base - 1:+12.2%}"
            )

        print(f"  ReplicaRouter vs single database: {_versus(ours, baseline, shape)}, of which")
        print(f"    replicas instead of the primary, no router: {_versus(using, baseline, shape)}")
        print(f"    the failover engine, no router:              {_versus(engine, using, shape)}")
        print(f"    the router itself, metrics included:         {_versus(ours, engine, shape)}")
        print(f"  ReplicaRouter vs multidb: {_versus(ours, multidb, shape)}")
        if shape == "request":
            bar_chart(
                OUT / "orm.svg",
                "One pooled Author.objects.get(), per request: µs, wall median (lower is better)",
                [(setup.name, statistics.median(setup.wall[shape])) for setup in setups],
                value_label=lambda us: f"{us:.1f} µs",
                ours=lambda name: name.startswith(("ReplicaRouter", "failover engine")),
            )
        print(f"  noise floor, single database vs itself: {_versus(again, baseline, shape)}")
        print(
            "  noise floor, replicas by .using() vs other connections to them: "
            f"{_versus(using_again, using, shape)}"
        )

    read = statistics.median(baseline.wall["request"])
    print(
        "\nthe routing decision alone, django.db.router.db_for_read(Author), µs, and what "
        f"it adds to a {read:.0f} µs per-request read:"
    )
    for setup in (baseline, multidb, ours):
        cost = decision[setup.name]
        extra = cost - decision[baseline.name]
        print(f"  {setup.name:34} {cost:6.2f}   {extra:+.2f} µs = {extra / read:+.3%}")


if __name__ == "__main__":
    main()
