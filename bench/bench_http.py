"""HTTP: the sample site under concurrent load, in three configurations side by side.

Run with ``make bench``, which starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``; needs ``wrk``, which ``make bench`` installs
(``apt-get install wrk``).

The same bookshop (``sample_site/``) serves read-heavy traffic (70 % book
pages with their reviews, 30 % pages of the book list) from ``wrk`` on
loopback, in rounds that alternate the configurations, served as
``http_load.py`` describes (gunicorn, a worker per core, no keep-alive). The
shop is emptied and seeded again first, so every run reads the same rows.

* ``django-default``: one database, ``CONN_MAX_AGE = 0`` (a new connection per
  request), no pool: Django's defaults;
* ``persistent``: one database, ``CONN_MAX_AGE = 600``;
* ``replica-router``: the router with two replicas (weights 1:1), Django's
  psycopg pool on every alias, health checks and read-your-writes on.

``CONN_HEALTH_CHECKS`` is off in all three, as Django has it by default.

Every server, the load generator and PostgreSQL share the machine's cores, so
the figures compare configurations; they are not a capacity figure.
"""

from __future__ import annotations

import argparse
import os
import sys

from charts import OUT, bar_chart
from http_load import ROOT, add_arguments, run_rounds, seed_shop
from machine import describe


def _configs(primary: str, replicas: list[str]) -> dict[str, dict[str, str]]:
    # CONN_HEALTH_CHECKS off everywhere, as Django's default has it: the sample
    # site turns it on for its own aliases, and a pool then tests every
    # connection it hands out with a round trip.
    pool = "pool_min_size=4&pool_max_size=12&conn_health_checks=False"
    return {
        "django-default": {
            "DATABASE_URL": f"{primary}?conn_health_checks=False",
            "REPLICA_URLS": "",
        },
        "persistent": {
            "DATABASE_URL": f"{primary}?conn_max_age=600&conn_health_checks=False",
            "REPLICA_URLS": "",
        },
        "replica-router": {
            "DATABASE_URL": f"{primary}?{pool}",
            "REPLICA_URLS": ",".join(f"{url}?{pool}" for url in replicas),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, rounds=5)
    args = parser.parse_args()

    cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
    if not cluster_dir:
        sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")
    sys.path.insert(0, str(ROOT))
    from replica_router.testing.cluster import PRIMARY, Cluster

    cluster = Cluster(cluster_dir)
    seed_shop(cluster.url(PRIMARY), args.books)
    cluster.wait_replayed()
    results = run_rounds(
        _configs(cluster.url(PRIMARY), [cluster.url(name) for name in cluster.replicas]), args
    )
    lines = [
        f"HTTP, sample site (gunicorn {args.workers} workers x {args.threads} threads, no "
        f"keep-alive), {args.books:,} books, wrk -t2 -c{args.connections}, "
        f"{args.rounds} rounds x {args.seconds} s per configuration, median of rounds; "
        f"{os.cpu_count()} cores shared by server, load generator and PostgreSQL",
        f"{'configuration':16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:16} {r['rps']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} "
            f"{r['errors'] + r['socket_errors']:7.0f}"
        )
    base = results["django-default"]["rps"]
    lines.append(
        f"replica-router / django-default: {results['replica-router']['rps'] / base:.2f}x; "
        f"persistent / django-default: {results['persistent']['rps'] / base:.2f}x"
    )
    lines.append(describe(len(cluster.replicas)))
    report = "\n".join(lines)
    print(report)
    OUT.mkdir(exist_ok=True)
    (OUT / "http.txt").write_text(report + "\n")
    bar_chart(
        OUT / "http.svg",
        "Sample site, requests per second (median of rounds; higher is better)",
        [(name, r["rps"]) for name, r in results.items()],
        value_label=lambda rps: f"{rps:.0f} req/s",
    )


if __name__ == "__main__":
    main()
