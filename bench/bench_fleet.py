"""One prober per cluster (HEALTH_SHARING), on real gunicorn workers: issue 15's figures.

Run with ``make bench`` (it starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``). gunicorn masters with sync workers serve
``testbed/fleet_site`` against the cluster's ``app`` database (migrated first);
``testbed/fleet`` starts them, counts the monitor's connections in each node's
``pg_stat_activity`` and times the faults. In one run:

1. one host of ``--workers`` workers: monitor connections per node with
   ``HEALTH_SHARING`` ``"process"`` and ``"host"``, side by side;
2. two hosts (two gunicorn masters) of half as many workers each, on one
   Redis, ``"cache"``;
3. a replica killed, and another paused (the primary commits ten times a
   second): the time until every worker has it out of rotation (and, for the
   killed one, how many of the prober's cycles after the kill still had it in:
   what tests/integration/test_fleet.py asserts, where the time is not);
4. the probing worker SIGKILLed: the time until another one holds the lease
   (a figure only: no test asserts it), and the reads that failed meanwhile
   (light load, 20 reads/s); then the same with replica_1 killed a moment
   after the prober, while no one probes: where the reads went, and when
   every worker had it out;
5. Redis stopped for a while under the same load: connections per node while
   it is down and after it is back, and the reads that failed.

Modes 3 and 4 run with ``"host"`` and ``"cache"``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import django  # noqa: E402
from machine import describe  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from replica_router.testing.cluster import Cluster  # noqa: E402
from replica_router.testing.redis_server import RedisServer  # noqa: E402
from testbed.fleet.connections import per_node, settle_connections  # noqa: E402
from testbed.fleet.hosts import all_states, cache_prefix, fleets  # noqa: E402
from testbed.fleet.load import Writer, seed  # noqa: E402
from testbed.fleet.outage import measure_store_outage  # noqa: E402
from testbed.fleet.rotation import measure_out_of_rotation  # noqa: E402
from testbed.fleet.takeover import measure_death_during_takeover, measure_takeover  # noqa: E402

DB = "app"


def counts(samples: list[dict[str, int | None]], nodes: list[str]) -> str:
    seen = per_node(samples)
    return " ".join(
        f"{'/'.join(str(c) for c in sorted(seen[n], key=lambda c: -1 if c is None else c)):>9}"
        for n in nodes
    )


def compact(samples: list[dict[str, int | None]], nodes: list[str]) -> str:
    return ", ".join(f"{n} {c}" for n, c in zip(nodes, counts(samples, nodes).split(), strict=True))


@contextlib.contextmanager
def restarted(cluster: Cluster, name: str = "replica_1") -> Iterator[None]:
    """Start ``name`` again afterwards, streaming and caught up, if it was killed."""
    try:
        yield
    finally:
        if not cluster.is_up(name):
            cluster.start(name)
        cluster.wait_streaming()
        cluster.wait_replayed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="CHECK_INTERVAL, s")
    parser.add_argument("--timeout", type=float, default=0.5, help="CHECK_TIMEOUT, s")
    parser.add_argument("--max-lag", type=float, default=2.0, help="MAX_LAG_SECONDS")
    args = parser.parse_args()

    cluster = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
    call_command("migrate", verbosity=0)
    seed(cluster, DB)
    nodes = cluster.nodes
    timing = {"CHECK_INTERVAL": args.interval, "CHECK_TIMEOUT": args.timeout}
    half = args.workers // 2
    one_host = (("host-a", args.workers),)
    two_hosts = (("host-a", half), ("host-b", args.workers - half))
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, file=sys.stderr, flush=True)  # progress; stdout gets the table at the end

    with RedisServer() as redis:

        def setup(mode: str) -> tuple[tuple[tuple[str, int], ...], dict[str, object]]:
            if mode == "cache":
                extra = {"REDIS_URL": redis.url(), "CACHE_PREFIX": cache_prefix()}
                return two_hosts, {"HEALTH_SHARING": mode, **extra, **timing}
            return one_host, {"HEALTH_SHARING": mode, **timing}

        # 1 and 2: connections.
        say("1-2. monitor connections per node (pg_stat_activity, 5 samples over 2 intervals)")
        say(f"{'mode':28} {'probers':>7} " + " ".join(f"{n:>9}" for n in nodes))
        for mode, label, expected in [
            ("process", f"process, 1 host x {args.workers}", args.workers),
            ("host", f"host, 1 host x {args.workers}", 1),
            ("cache", f"cache, 2 hosts x {half}", 1),
        ]:
            groups, settings = setup(mode)
            with fleets(*groups, database=DB, **settings) as started:
                settled = settle_connections(cluster, DB, expected, interval=args.interval)
                probers = sum(s["probing_here"] for s in all_states(started).values())
            say(f"{label:28} {probers:7} {counts(settled.samples, nodes)}")

        # 3: a killed replica, a paused one.
        say("")
        say(f"3. out of rotation in every worker (CHECK_INTERVAL {args.interval:g} s)")
        for mode in ("host", "cache"):
            groups, settings = setup(mode)
            with fleets(*groups, database=DB, **settings) as started, restarted(cluster):
                settle_connections(cluster, DB, 1, interval=args.interval, samples=1)
                out = measure_out_of_rotation(
                    started, "replica_1", lambda: cluster.kill("replica_1")
                )
            say(
                f"   {mode:5} killed replica_1: last worker {out.last:.2f} s "
                f"({out.last / args.interval:.2f} intervals), median {out.median:.2f} s, "
                f"{len(out.seconds)} workers; prober's cycles after the kill with it still "
                f"in: {out.cycles_still_in}"
            )
        gap = args.interval + args.timeout
        for mode in ("host", "cache"):
            groups, settings = setup(mode)
            with (
                Writer(cluster, DB),
                fleets(*groups, database=DB, MAX_LAG_SECONDS=args.max_lag, **settings) as started,
            ):
                settle_connections(cluster, DB, 1, interval=args.interval, samples=1)
                try:
                    out = measure_out_of_rotation(
                        started, "replica_1", lambda: cluster.pause("replica_1")
                    )
                finally:
                    cluster.resume("replica_1")
            say(
                f"   {mode:5} paused replica_1: last worker {out.last:.2f} s, median "
                f"{out.median:.2f} s (out from MAX_LAG_SECONDS {args.max_lag:g} - probe gap "
                f"{gap:g} s = {args.max_lag - gap:g} s of lag)"
            )

        # 4: the prober killed.
        say("")
        say("4. prober SIGKILLed under 20 reads/s")
        for mode in ("host", "cache"):
            groups, settings = setup(mode)
            with fleets(*groups, database=DB, **settings) as started:
                settle_connections(cluster, DB, 1, interval=args.interval, samples=1)
                t = measure_takeover(started, interval=args.interval)
                after = settle_connections(cluster, DB, 1, interval=args.interval)
            say(
                f"   {mode:5} takeover after {t.seconds:.2f} s "
                f"({t.seconds / args.interval:.2f} intervals; seen after "
                f"{t.observed_seconds:.2f} s), failed reads {len(t.failures)}/{t.reads}, "
                f"connections after: {compact(after.samples, nodes)}"
            )

        for mode in ("host", "cache"):
            groups, settings = setup(mode)
            with fleets(*groups, database=DB, **settings) as started, restarted(cluster):
                settle_connections(cluster, DB, 1, interval=args.interval, samples=1)
                d = measure_death_during_takeover(
                    started, "replica_1", cluster.kill, interval=args.interval
                )
            say(
                f"   {mode:5} and replica_1 killed {args.interval / 5:g} s later: out in every "
                f"worker after {d.last_out:.2f} s, new prober after {d.took_over:.2f} s; "
                f"reads {d.reads}: sent to replica_1 {len(d.sent_there)} (all served "
                f"elsewhere), served by it {len(d.served_there)}, failed "
                f"{len(d.takeover.failures)}, sent after it was out {len(d.sent_after_out)}"
            )

        # 5: Redis down.
        say("")
        say(f"5. Redis stopped under 20 reads/s (cache, 2 hosts x {half})")
        groups, settings = setup("cache")
        with fleets(*groups, database=DB, **settings) as started:
            settle_connections(cluster, DB, 1, interval=args.interval, samples=1)
            o = measure_store_outage(started, redis, cluster, DB, interval=args.interval)
        say(
            f"   down:  {compact(o.down, nodes)} after {o.fallback_seconds:.2f} s,"
            f" {o.workers_in_fallback} workers in fallback"
        )
        say(f"   back:  {compact(o.after, nodes)} after {o.recovery_seconds:.2f} s")
        say(f"   failed reads {len(o.failures)}/{o.reads}")

    print(
        f"fleet: HEALTH_SHARING with {args.workers} gunicorn sync workers, CHECK_INTERVAL "
        f"{args.interval:g} s, CHECK_TIMEOUT {args.timeout:g} s"
    )
    print(describe(len(cluster.replicas)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
