"""Read-your-writes modes side by side: stale reads and the share of reads replicas serve.

Run with ``make bench`` (it starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``). Every replica applies WAL with a delay
(``--delay``, default 0.3 s), like a replica set under load.

The workload (``ryw_workload.py``) is write-heavy: virtual users, interleaved,
each doing ``--ops`` operations; ``--writes`` of them (20 % by default) create
a row and are followed at once by a read of that row, the rest read one of the
user's earlier rows. A read of a row the user has created that comes back
missing is a stale read. The three modes run one after another in the same process on the
same cluster: ``lsn``, ``time`` and ``off``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import django  # noqa: E402
from charts import OUT, bar_chart  # noqa: E402
from machine import describe  # noqa: E402
from ryw_workload import add_arguments, run_workload  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

from replica_router.testing.cluster import Cluster  # noqa: E402

MIDDLEWARE = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    overrides = {
        **settings.REPLICA_ROUTER,
        "READ_YOUR_WRITES": mode,
        "PIN_SECONDS": args.pin_seconds,
    }
    with override_settings(
        ROOT_URLCONF="testbed.ryw_urls", MIDDLEWARE=MIDDLEWARE, REPLICA_ROUTER=overrides
    ):
        return run_workload(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--pin-seconds", type=float, default=5.0)
    args = parser.parse_args()

    cluster = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
    call_command("migrate", verbosity=0)
    cluster.wait_replayed()
    for name in cluster.replicas:
        cluster.delay(name, args.delay)
    try:
        results = {mode: run_mode(mode, args) for mode in ("lsn", "time", "off")}
    finally:
        for name in cluster.replicas:
            cluster.delay(name, 0)

    print(
        f"read-your-writes: {args.users} users x {args.ops} ops, {args.writes:.0%} writes "
        f"(each followed by a read of its row), replicas {args.delay:g} s behind, "
        f"PIN_SECONDS {args.pin_seconds:g}"
    )
    print(describe(len(cluster.replicas)))
    print(f"{'mode':6} {'reads':>6} {'stale':>6} {'replica share':>14}")
    for mode, r in results.items():
        print(f"{mode:6} {r['reads']:6.0f} {r['stale']:6.0f} {r['replica_share']:14.1%}")
    ratio = results["lsn"]["replica_share"] / max(results["time"]["replica_share"], 1e-9)
    print(f"lsn replica share / time replica share: {ratio:.1f}x")
    bar_chart(
        OUT / "read_your_writes.svg",
        "Share of reads served by replicas, by READ_YOUR_WRITES mode",
        [
            (f"{mode} ({r['stale']:.0f} stale reads)", r["replica_share"] * 100)
            for mode, r in results.items()
        ],
        value_label=lambda share: f"{share:.1f} %",
        ours=lambda name: name.startswith("lsn"),
    )


if __name__ == "__main__":
    main()
