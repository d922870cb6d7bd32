"""pgpool-II and the router side by side: throughput, stale reads, replica faults.

Run with ``make bench``, which installs pgpool2 (Debian's package), starts the
local cluster and sets ``REPLICA_ROUTER_CLUSTER_DIR``. pgpool-II runs in front
of the same primary and replicas (``pgpool_server.py``), with read weights 3:1
like the router's, and every setting it runs with is printed first. In one run:

1. HTTP: the sample site under the same ``wrk`` workload and gunicorn set-up
   as bench_http.py (``http_load.py``), rounds alternating between the router
   (weights 3:1, Django's pool on every alias, health checks and
   read-your-writes on) and pgpool-II as the site's only database (Django's
   own backend and pool, no router, no middleware of ours).
2. Stale reads after a write: the bench_read_your_writes workload
   (``ryw_workload.py``) with replicas 0.3 s behind, through the router, and
   through pgpool-II with ``disable_load_balance_on_write = 'always'``, once
   pooled and once with a connection per request.
3. Replica faults: reader threads and a heartbeat writer while replica_1 is
   SIGKILLed, or SIGSTOPped (a hung host), for a few seconds, then started or
   thawed: failed reads, the slowest read, and how long after its return
   replica_1 serves a read again. A fresh pgpool-II (every node up) and a fresh
   router (a new monitor, new pools) for each.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import http_load  # noqa: E402
import ryw_workload  # noqa: E402
from charts import OUT, bar_chart  # noqa: E402
from machine import describe  # noqa: E402
from pgpool_server import PGPOOL, PgpoolServer  # noqa: E402

from replica_router.testing.cluster import PRIMARY, Cluster  # noqa: E402

CLUSTER = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
WEIGHTS = {"replica_1": 3, "replica_2": 1}
MAX_LAG_BYTES = 16 * 1024 * 1024
# Django's pool on the site's aliases in the HTTP run, ours and pgpool's alike,
# and the time zone in the start-up packet (see pgpool_site.TIME_ZONE_OPTION).
HTTP_POOL = "pool_min_size=4&pool_max_size=12&conn_health_checks=False&options=-c%20TimeZone%3DUTC"
FAULTED = "replica_1"


def _pgpool_version() -> str:
    out = subprocess.run([PGPOOL, "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip()


# -- 1. HTTP ---------------------------------------------------------------------------


def http_configs(pgpool: PgpoolServer) -> dict[str, dict[str, str]]:
    replicas = ",".join(
        f"{CLUSTER.url(name)}?weight={weight}&{HTTP_POOL}" for name, weight in WEIGHTS.items()
    )
    return {
        "replica-router": {
            "DATABASE_URL": f"{CLUSTER.url(PRIMARY)}?{HTTP_POOL}",
            "REPLICA_URLS": replicas,
        },
        "pgpool-II": {
            "DATABASE_URL": f"{pgpool.url}?{HTTP_POOL}",
            "REPLICA_URLS": "",
            "DJANGO_SETTINGS_MODULE": "pgpool_bookshop",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])),
        },
    }


# -- in-process: Django with both ways to the cluster ------------------------------------


def _setup_django(pgpool: PgpoolServer) -> None:
    os.environ["PGPOOL_PORT"] = str(pgpool.port)
    os.environ["DJANGO_SETTINGS_MODULE"] = "pgpool_site"
    import django

    django.setup()
    # override_settings(DATABASE_ROUTERS=...) resets django.db.router through
    # the receivers this module connects.
    import django.test.signals  # noqa: F401
    from django.core.management import call_command

    # The tables of the read cost and the stale reads, on a fresh cluster too.
    call_command("migrate", verbosity=0)


def _close_pools() -> None:
    """No connection or pool of this process left from an earlier part (or from
    before pgpool-II restarted)."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    connections.close_all()
    pools = DatabaseWrapper._connection_pools
    for alias in list(pools):
        pools.pop(alias).close()


@contextlib.contextmanager
def _side(side: str) -> Iterator[None]:
    """Django routed as ``side`` says: ``replica-router``, or every query to one
    of the pgpool aliases (``pgpool``, ``pgpool_per_request``)."""
    import pgpool_site
    from django.conf import settings
    from django.test import override_settings

    _close_pools()
    if side == "replica-router":
        # A new REPLICA_ROUTER value: a new monitor, nothing remembered.
        overrides: dict[str, Any] = {"REPLICA_ROUTER": {**settings.REPLICA_ROUTER}}
    else:
        pgpool_site.ThroughPgpool.alias = side
        overrides = {
            "DATABASE_ROUTERS": ["pgpool_site.ThroughPgpool"],
            "MIDDLEWARE": [m for m in settings.MIDDLEWARE if not m.startswith("replica_router")],
        }
    try:
        with override_settings(**overrides):
            yield
    finally:
        _close_pools()


# -- 2. stale reads after a write --------------------------------------------------------

RYW_SETUPS = {
    "replica-router, lsn, pooled": "replica-router",
    "pgpool-II, always, pooled": "pgpool",
    "pgpool-II, always, per request": "pgpool_per_request",
}


def stale_reads(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from django.db import close_old_connections

    CLUSTER.wait_replayed()
    results = {}
    for name in CLUSTER.replicas:
        CLUSTER.delay(name, args.delay)
    try:
        for label, side in RYW_SETUPS.items():
            with _side(side):
                # What the end of a request does, which the test client skips:
                # closes a connection with CONN_MAX_AGE 0, returns a pooled one.
                results[label] = ryw_workload.run_workload(args, end_request=close_old_connections)
    finally:
        for name in CLUSTER.replicas:
            CLUSTER.delay(name, 0)
    return results


# -- 3. replica faults -------------------------------------------------------------------


@dataclass
class Load:
    """Reader threads reading a heartbeat row that a writer keeps fresh."""

    heartbeat_pk: int
    readers: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: (started, seconds, port of the node that answered)
    reads: list[tuple[float, float, int]] = field(default_factory=list)
    #: (started, seconds until the error, the error)
    failures: list[tuple[float, float, str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _reader(self) -> None:
        from django.db import close_old_connections, connections
        from django.db.models.expressions import RawSQL

        from testbed.testapp.models import Author

        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    port = (
                        Author.objects.filter(pk=self.heartbeat_pk)
                        .annotate(port=RawSQL("inet_server_port()", ()))
                        .values_list("port", flat=True)
                        .get()
                    )
                except Exception as exc:
                    failed = (
                        started,
                        time.perf_counter() - started,
                        f"{type(exc).__name__}: {exc}",
                    )
                    with self.lock:
                        self.failures.append(failed)
                    time.sleep(0.01)  # an error comes back at once; do not spin on it
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        close_old_connections()
                with self.lock:
                    self.reads.append((started, time.perf_counter() - started, port))
        finally:
            connections.close_all()

    def _writer(self) -> None:
        from django.db import close_old_connections, connections

        from testbed.testapp.models import Author

        try:
            while not self.stop.is_set():
                # A failed heartbeat is not a read; the readers count those.
                with contextlib.suppress(Exception):
                    Author.objects.filter(pk=self.heartbeat_pk).update(name=repr(time.time()))
                with contextlib.suppress(Exception):
                    close_old_connections()
                self.stop.wait(0.05)
        finally:
            connections.close_all()

    def served_by(self, port: int, since: float) -> float | None:
        """When the first read that started at ``since`` or later and was served by
        ``port`` started."""
        with self.lock:
            starts = [r[0] for r in self.reads if r[2] == port and r[0] >= since]
        return min(starts, default=None)

    def __enter__(self) -> Load:
        targets = [self._reader] * self.readers + [self._writer]
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _restore() -> None:
    for name in CLUSTER.nodes:
        CLUSTER.thaw(name)
        CLUSTER.start(name)
    CLUSTER.wait_streaming()
    CLUSTER.wait_replayed()


def fault(kind: str, side: str, pgpool: PgpoolServer, args: argparse.Namespace) -> dict[str, Any]:
    from testbed.testapp.models import Author

    heartbeat = Author.objects.using("default").create(name=repr(time.time()))
    CLUSTER.wait_replayed()
    if side != "replica-router":
        pgpool.restart()
    port = CLUSTER.port(FAULTED)
    back: float | None = None
    try:
        with _side(side), Load(heartbeat.pk, args.readers) as load:
            t0 = time.perf_counter()
            time.sleep(args.fault_at)
            if kind == "kill":
                CLUSTER.kill(FAULTED)
                time.sleep(args.fault_for)
                CLUSTER.start(FAULTED)
            else:
                CLUSTER.freeze(FAULTED)
                time.sleep(args.fault_for)
                CLUSTER.thaw(FAULTED)
            returned = time.perf_counter()
            deadline = returned + args.back_within
            while time.perf_counter() < deadline:
                served = load.served_by(port, returned)
                if served is not None:
                    back = served - returned
                    break
                time.sleep(0.05)
            time.sleep(1)
            elapsed = time.perf_counter() - t0
    finally:
        _restore()
    # A read that failed kept its caller waiting too: the slowest and p99 count it.
    durations = [r[1] for r in load.reads] + [f[1] for f in load.failures]
    return {
        "reads": len(durations),
        "failed": len(load.failures),
        "first_failure": " ".join(load.failures[0][2].split())[:160] if load.failures else "",
        "p99": statistics.quantiles(durations, n=100)[98] * 1000 if len(durations) > 1 else 0.0,
        "slowest": max(durations, default=0.0) * 1000,
        "back": back,
        "elapsed": elapsed,
    }


# -- 4. what one read costs ------------------------------------------------------------


def read_cost(reads: int) -> dict[str, float]:
    """Median µs of one ORM read by primary key on a held connection, through the
    router (to a replica) and through pgpool-II (which passes it to a replica),
    taking turns read by read."""
    from django.db import connections

    from testbed.testapp.models import Author

    pk = Author.objects.using("default").create(name="read cost").pk
    CLUSTER.wait_replayed()
    times: dict[str, list[float]] = {"replica-router": [], "pgpool-II": []}
    with _side("replica-router"):
        try:
            for i in range(reads + 200):
                started = time.perf_counter()
                Author.objects.get(pk=pk)
                middle = time.perf_counter()
                Author.objects.using("pgpool").get(pk=pk)
                if i >= 200:  # the first reads connect and warm the caches
                    times["replica-router"].append(middle - started)
                    times["pgpool-II"].append(time.perf_counter() - middle)
        finally:
            connections.close_all()
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


# -- the report --------------------------------------------------------------------------


def _settings_lines(pgpool: PgpoolServer) -> list[str]:
    text = "; ".join(f"{key} = {value}" for key, value in pgpool.settings.items())
    return textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 3 rounds, not bench_http.py's 5: the whole bench stays within about 5 minutes.
    http_load.add_arguments(parser, rounds=3)
    ryw_workload.add_arguments(parser)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--fault-at", type=float, default=2.0)
    parser.add_argument("--fault-for", type=float, default=7.0)
    parser.add_argument("--back-within", type=float, default=15.0)
    parser.add_argument("--reads", type=int, default=2000, help="reads timed per side")
    parser.add_argument("--pgpool-log", type=Path, help="keep pgpool-II's log there")
    parser.add_argument(
        "--skip", choices=["http", "ryw", "faults", "cost"], action="append", default=[]
    )
    args = parser.parse_args()

    started = time.monotonic()
    # Stopped with SIGTERM (a timeout, a CI job cancelled), still stop pgpool-II
    # and put the cluster back: the finally blocks run on SystemExit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # The faults make psycopg_pool log each failed reconnection and psycopg
    # pgpool's notices ("executing failover"): expected, and counted above.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    # Room for every pooled session of the HTTP run (12 per gunicorn worker)
    # and the readers of the fault runs; pgpool queues clients beyond it.
    children = max(32, args.workers * 12 + 8)
    pgpool = PgpoolServer(CLUSTER, weights=WEIGHTS, children=children, max_lag_bytes=MAX_LAG_BYTES)
    http: dict[str, dict[str, float]] = {}
    ryw: dict[str, dict[str, float]] = {}
    faults: dict[tuple[str, str], dict[str, Any]] = {}
    cost: dict[str, float] = {}
    selects: dict[str, int] = {}
    try:
        pgpool.start()
        _setup_django(pgpool)
        if "http" not in args.skip:
            http_load.seed_shop(CLUSTER.url(PRIMARY), args.books)
            CLUSTER.wait_replayed()
            http = http_load.run_rounds(http_configs(pgpool), args)
            # pgpool counts the SELECTs it sent to each node: the 3:1 it was given?
            selects = {name: int(row["select_cnt"]) for name, row in pgpool.nodes().items()}
        if "cost" not in args.skip:
            cost = read_cost(args.reads)
        if "ryw" not in args.skip:
            ryw = stale_reads(args)
        if "faults" not in args.skip:
            for kind in ("kill", "freeze"):
                for side in ("replica-router", "pgpool"):
                    faults[kind, side] = fault(kind, side, pgpool, args)
    finally:
        if args.pgpool_log:
            with contextlib.suppress(OSError):
                args.pgpool_log.write_bytes(pgpool.log.read_bytes())
        pgpool.remove()

    lines = [
        f"pgpool-II and replica-router side by side on one cluster ({_pgpool_version()}); "
        f"read weights replica_1:replica_2 = 3:1 in both",
        describe(len(CLUSTER.replicas)),
        "pgpool.conf, every setting (ports and the run directory are this run's):",
        *_settings_lines(pgpool),
        "replica-router: REPLICA_ROUTER "
        + ", ".join(f"{k} {v}" for k, v in _router_settings().items()),
        "  (in the HTTP run, the sample site's own: the same but for PRIMARY_ONLY sessions "
        "and HEALTH_SHARING 'host')",
    ]
    if http:
        lines += [
            "",
            f"HTTP, sample site read pages (gunicorn {args.workers} workers x {args.threads} "
            f"threads, no keep-alive), wrk -t2 -c{args.connections}, {args.rounds} rounds x "
            f"{args.seconds} s per set-up, alternating; median of rounds, slowest of all; "
            f"Django's pool (min 4, max 12 per worker) on every alias",
            f"{'set-up':16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'slowest ms':>11} "
            f"{'errors':>7}",
        ]
        for name, r in http.items():
            lines.append(
                f"{name:16} {r['rps']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['max']:11.1f} "
                f"{r['errors'] + r['socket_errors']:7.0f}"
            )
        ours, theirs = http["replica-router"], http["pgpool-II"]
        lines.append(
            f"replica-router / pgpool-II: {ours['rps'] / theirs['rps']:.2f}x req/s, "
            f"p99 {ours['p99']:.1f} ms vs {theirs['p99']:.1f} ms"
        )
        lines.append(
            "SELECTs pgpool-II sent to each node during the HTTP rounds: "
            + ", ".join(f"{name} {count:,}" for name, count in selects.items())
        )
    if cost:
        ours, theirs = cost["replica-router"], cost["pgpool-II"]
        lines += [
            "",
            f"one ORM read by primary key on a held connection, {args.reads} per side, "
            f"taking turns: replica-router {ours:.0f} µs, pgpool-II {theirs:.0f} µs "
            f"(the hop through pgpool-II: +{theirs - ours:.0f} µs a query)",
        ]
    if ryw:
        lines += [
            "",
            f"stale reads after a write: {args.users} users x {args.ops} ops, "
            f"{args.writes:.0%} writes (each followed by a read of its row), "
            f"replicas {args.delay:g} s behind",
            f"{'set-up':32} {'reads':>6} {'stale':>6} {'replica share':>14}",
        ]
        for name, r in ryw.items():
            lines.append(
                f"{name:32} {r['reads']:6.0f} {r['stale']:6.0f} {r['replica_share']:14.1%}"
            )
    if faults:
        lines += [
            "",
            f"{FAULTED} killed (SIGKILL) or frozen (SIGSTOP) {args.fault_at:g} s in, for "
            f"{args.fault_for:g} s, under {args.readers} reader threads and a heartbeat "
            f"writer; reads, p99 and slowest include the failed ones; 'back' is how long after "
            "it returned it served a read again",
            f"{'fault':7} {'set-up':16} {'reads':>6} {'failed':>7} {'p99 ms':>8} "
            f"{'slowest ms':>11} {'back s':>7}",
        ]
        for (kind, side), r in faults.items():
            name = "pgpool-II" if side == "pgpool" else side
            back = (
                f"{r['back']:7.1f}" if r["back"] is not None else f">{args.back_within:g}".rjust(7)
            )
            lines.append(
                f"{kind:7} {name:16} {r['reads']:6d} {r['failed']:7d} {r['p99']:8.1f} "
                f"{r['slowest']:11.1f} {back:>7}"
            )
        for (kind, side), r in faults.items():
            if r["first_failure"]:
                lines.append(f"  first failed read, {kind}, {side}: {r['first_failure']}")
    lines.append(f"total {time.monotonic() - started:.0f} s")
    print("\n".join(lines))
    _charts(http, ryw, faults)


def _router_settings() -> dict[str, Any]:
    from django.conf import settings

    return {k: v for k, v in settings.REPLICA_ROUTER.items() if k != "PRIMARY"}


def _charts(
    http: dict[str, dict[str, float]],
    ryw: dict[str, dict[str, float]],
    faults: dict[tuple[str, str], dict[str, Any]],
) -> None:
    if http:
        bar_chart(
            OUT / "pgpool.svg",
            "Sample site through the router and through pgpool-II, req/s (higher is better)",
            [(f"{name} (p99 {r['p99']:.0f} ms)", r["rps"]) for name, r in http.items()],
            value_label=lambda rps: f"{rps:.0f} req/s",
        )
    if faults:
        bar_chart(
            OUT / "pgpool_faults.svg",
            "Slowest read while a replica is killed or frozen, ms (lower is better)",
            [
                (
                    f"{'pgpool-II' if side == 'pgpool' else side}, {kind} ({r['failed']} failed)",
                    r["slowest"],
                )
                for (kind, side), r in faults.items()
            ],
            value_label=lambda ms: f"{ms:.0f} ms",
        )


if __name__ == "__main__":
    main()
