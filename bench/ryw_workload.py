"""The read-your-writes workload of bench_read_your_writes.py and bench_pgpool.py.

Virtual users, interleaved, each doing ``ops`` operations; a share ``writes``
of them create a row (``POST /authors/``) and are followed at once by a read of
that row (``GET /authors/<pk>/``), the rest read one of the user's earlier
rows. A read of a row the user has created that comes back missing (404) is a
stale read. Each response names the alias, or node, that served it (``db``;
``default`` for the primary). The same seed gives every run the same
operation sequence.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable

from django.test import Client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload's options, which ``run_workload`` reads."""
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--ops", type=int, default=150, help="operations per user")
    parser.add_argument("--writes", type=float, default=0.2, help="share of writes")
    parser.add_argument("--delay", type=float, default=0.3, help="replica apply delay, s")
    parser.add_argument("--think", type=float, default=0.01, help="pause between ops, s")


def run_workload(
    args: argparse.Namespace, *, end_request: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Run it under the current settings, with the replicas already ``args.delay``
    behind; ``end_request`` runs after each request (the test client skips
    Django's own end of request, which closes or returns connections)."""
    users, ops, writes, think = args.users, args.ops, args.writes, args.think
    rng = random.Random(42)
    clients = [Client() for _ in range(users)]
    rows: list[list[int]] = [[] for _ in range(users)]
    served: Counter[str] = Counter()
    stale = reads = 0
    # Start every user with one replicated row, so reads have something to read.
    for i, client in enumerate(clients):
        rows[i].append(client.post("/authors/", {"name": "seed"}).json()["id"])
        end_request()
        client.cookies.clear()
    time.sleep(args.delay + 0.2)
    for op in range(ops * users):
        user = op % users
        client = clients[user]
        if rng.random() < writes:
            pk = client.post("/authors/", {"name": f"u{user}"}).json()["id"]
            end_request()
            rows[user].append(pk)
        else:
            pk = rng.choice(rows[user])
        response = client.get(f"/authors/{pk}/")
        end_request()
        reads += 1
        if response.status_code == 404:
            stale += 1
        else:
            served[response.json()["db"]] += 1
        time.sleep(think)
    replica_reads = sum(n for alias, n in served.items() if alias != "default")
    return {"reads": reads, "stale": stale, "replica_share": replica_reads / reads}
