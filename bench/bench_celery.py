"""Celery tasks enqueued right after a write: stale reads with and without ``install(app)``.

Run with ``make bench`` (it starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``). It starts its own redis-server (through
``replica_router.testing.redis_server``) as broker and result backend, and a
Celery worker in this process (threads pool). Every replica applies WAL with
a delay (``--delay``, default 1 s).

Like ``--tasks`` requests (100 by default), each creates a row on the primary
and at once enqueues a task that loads it. A task that finds no row has read a
stale replica. The same workload runs twice, on two apps in one process: one
with ``install(app)``, one without.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import django  # noqa: E402
from machine import describe  # noqa: E402

django.setup()

import celery  # noqa: E402
import redis as redis_client  # noqa: E402
from celery.contrib.testing.worker import start_worker  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

from replica_router import causal  # noqa: E402
from replica_router.contrib.celery import install  # noqa: E402
from replica_router.testing.cluster import Cluster  # noqa: E402
from replica_router.testing.redis_server import RedisServer  # noqa: E402
from testbed.celery_app import make_app  # noqa: E402
from testbed.testapp.models import Author  # noqa: E402

# The health monitor would take replicas this far behind out of rotation, which
# hides the staleness being measured; here they stay in.
TOLERANT = {"MAX_LAG_SECONDS": 3600.0, "MAX_LAG_BYTES": 2**40}


def run(app, tasks: int) -> Counter[str]:
    """Counts of where the tasks' reads went: an alias, or "stale"."""
    outcomes: Counter[str] = Counter()
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False):
        results = []
        for i in range(tasks):
            with causal():  # what PrimaryPinningMiddleware gives each request
                author = Author.objects.create(name=f"bench {i}")
                results.append(app.tasks["read_author"].delay(author.pk))
        for result in results:
            read = result.get(timeout=120)
            outcomes[read["db"] if read["found"] else "stale"] += 1
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--delay", type=float, default=1.0, help="replica apply delay, s")
    args = parser.parse_args()

    cluster = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
    call_command("migrate", verbosity=0)
    cluster.wait_replayed()
    results: dict[str, Counter[str]] = {}
    with RedisServer() as redis:
        info = redis_client.Redis.from_url(redis.url()).info("server")
        for name in cluster.replicas:
            cluster.delay(name, args.delay)
        try:
            with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **TOLERANT}):
                for label, installed in (("with", True), ("without", False)):
                    app = make_app(f"bench-{label}", redis.url())
                    if installed:
                        install(app)
                    results[label] = run(app, args.tasks)
                    # The replicas catch up, so the second run starts as the first did.
                    cluster.wait_replayed()
        finally:
            for name in cluster.replicas:
                cluster.delay(name, 0)

    on = results["with"]
    primary = settings.REPLICA_ROUTER["PRIMARY"]
    on_replicas = sum(n for db, n in on.items() if db not in {"stale", primary})
    print(
        f"celery: {args.tasks} tasks enqueued right after a write, replicas {args.delay:g} s "
        f"behind: with install(app) {on['stale']} stale reads ({on_replicas} on replicas, "
        f"{on[primary]} on the primary); without it {results['without']['stale']} stale reads"
    )
    print(describe(len(cluster.replicas)))
    print(
        f"celery {celery.__version__}, worker in-process (threads pool, 4 threads), "
        f"broker and results on redis-server {info['redis_version']}"
    )


if __name__ == "__main__":
    main()
