"""How long ``db_for_read`` takes: replica_router.ReplicaRouter against django-multidb-router.

Run with ``python bench/bench_router.py`` (needs ``pip install django-multidb-router``).
Routing does no I/O, so Django is configured here with three replica aliases and
never connects; no cluster is needed.

Both routers run in one process, in interleaved rounds, so that drift in CPU
frequency or load hits both alike. Each round times NUMBER calls; the report gives
the best and the median round in ns per call, and ours / theirs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import django
from django.conf import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPLICAS = ["replica_1", "replica_2", "replica_3"]


def _setup() -> None:
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "127.0.0.1"}
    settings.configure(
        DATABASES={
            "default": database,
            **{alias: {**database, "TEST": {"MIRROR": "default"}} for alias in REPLICAS},
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        DATABASE_ROUTERS=["replica_router.ReplicaRouter"],
        # ours: equal weights, like multidb's round-robin
        REPLICA_ROUTER={"REPLICAS": REPLICAS},
        # django-multidb-router's setting
        REPLICA_DATABASES=REPLICAS,
        USE_TZ=True,
    )
    django.setup()


def _per_call_ns(func: Callable[[], object], number: int) -> float:
    return timeit.Timer(func).timeit(number) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()

    _setup()
    from django.contrib.auth.models import User
    from django.db import connections
    from multidb import PinningReplicaRouter

    from replica_router import ReplicaRouter, use_primary

    ours = ReplicaRouter()
    theirs = PinningReplicaRouter()

    # Warm up: builds our routing state and multidb's replica cycle, and checks
    # that both really route to replicas.
    assert ours.db_for_read(User) in REPLICAS
    assert theirs.db_for_read(User) in REPLICAS

    ours_read = ours.db_for_read
    theirs_read = theirs.db_for_read

    def ours_common() -> object:
        return ours_read(User)

    def theirs_common() -> object:
        return theirs_read(User)

    results: dict[str, list[float]] = {"ours": [], "multidb": []}
    for _ in range(args.rounds):
        results["ours"].append(_per_call_ns(ours_common, args.number))
        results["multidb"].append(_per_call_ns(theirs_common, args.number))

    # The pinned path: every read goes to the primary under use_primary().
    pinned: list[float] = []
    with use_primary():
        assert ours.db_for_read(User) == "default"
        for _ in range(args.rounds):
            pinned.append(_per_call_ns(ours_common, args.number))

    # The in-transaction path. Setting in_atomic_block on the connection wrapper
    # is what atomic() does after it has opened a transaction; doing it by hand
    # lets the bench measure the routing decision without connecting.
    primary = connections["default"]
    in_transaction: list[float] = []
    primary.in_atomic_block = True
    try:
        assert ours.db_for_read(User) == "default"
        for _ in range(args.rounds):
            in_transaction.append(_per_call_ns(ours_common, args.number))
    finally:
        primary.in_atomic_block = False

    print(
        f"db_for_read, ns per call ({args.rounds} rounds x {args.number:,} calls, "
        f"Python {sys.version.split()[0]}, Django {django.get_version()})"
    )
    print(f"{'':34} {'best':>8} {'median':>8}")
    rows = [
        ("multidb PinningReplicaRouter", results["multidb"]),
        ("ReplicaRouter (3 replicas)", results["ours"]),
        ("ReplicaRouter under use_primary", pinned),
        ("ReplicaRouter inside atomic()", in_transaction),
    ]
    for name, timings in rows:
        print(f"{name:34} {min(timings):8.1f} {statistics.median(timings):8.1f}")
    best_ratio = min(results["ours"]) / min(results["multidb"])
    median_ratio = statistics.median(results["ours"]) / statistics.median(results["multidb"])
    print(f"ratio ours/multidb: best {best_ratio:.2f}, median {median_ratio:.2f}")


if __name__ == "__main__":
    main()
