"""Replicas that come and go under read load: discovery from a real DNS server.

Run with ``make bench`` (it starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``). It starts its own dnsmasq (through
``replica_router.testing.dns_server``), which lists the replicas by SRV
records, and reader threads that read through the router the whole time.
Then it adds a replica to the records, removes one, and stops the DNS server
for ``--down`` seconds, and prints one line for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import django  # noqa: E402
from machine import describe  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test import override_settings  # noqa: E402

from replica_router.runtime import load  # noqa: E402
from replica_router.testing.cluster import Cluster  # noqa: E402
from replica_router.testing.dns_server import DnsServer  # noqa: E402
from testbed.discovery import NAME, Readers, alias_of, in_rotation, serve  # noqa: E402
from testbed.polling import wait_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", type=float, default=1.0, help="REFRESH_SECONDS")
    parser.add_argument("--interval", type=float, default=0.5, help="CHECK_INTERVAL")
    parser.add_argument("--drain", type=float, default=2.0, help="DRAIN_SECONDS")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the DNS server is down")
    parser.add_argument("--readers", type=int, default=8)
    args = parser.parse_args()

    cluster = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
    call_command("migrate", verbosity=0)
    cluster.wait_replayed()
    first, second = (alias_of(cluster, name) for name in ("replica_1", "replica_2"))
    with DnsServer(ttl=0) as dns:
        serve(dns, cluster, "replica_1")
        router_settings = {
            **settings.REPLICA_ROUTER,
            "REPLICAS": {},
            "TRANSACTION_POOLING": False,
            "CHECK_INTERVAL": args.interval,
            "DISCOVERY": {
                "SOURCE": "dns",
                "NAME": NAME,
                "NAMESERVERS": [dns.address],
                "REFRESH_SECONDS": args.refresh,
                "JITTER_SECONDS": 0,
                "WARMUP_SECONDS": 0,
                "DRAIN_SECONDS": args.drain,
            },
        }
        with override_settings(REPLICA_ROUTER=router_settings):
            wait_for(lambda: in_rotation() == {first})
            with Readers(args.readers) as readers:
                serve(dns, cluster, "replica_1", "replica_2")
                added_at = time.monotonic()
                wait_for(lambda: readers.served(added_at)[second] > 0)
                first_read = min(at for at, alias in readers.reads if alias == second) - added_at
                print(
                    f"replica added: first read after {first_read:.1f} s "
                    f"(refresh {args.refresh:g} s)"
                )

                failed_before = len(readers.failed)
                serve(dns, cluster, "replica_2")
                wait_for(lambda: first not in load().replicas)
                removed_at = time.monotonic()
                wait_for(lambda: first not in connections.settings)
                print(
                    f"replica removed: reads sent to it after removal "
                    f"{readers.served(removed_at)[first]}, failed reads "
                    f"{len(readers.failed) - failed_before}"
                )

                failed_before = len(readers.failed)
                dns.halt()
                time.sleep(args.down)
                dns.start()
                print(
                    f"discovery down {args.down:g} s: failed reads "
                    f"{len(readers.failed) - failed_before}"
                )
            total = len(readers.reads)
    print(
        f"{args.readers} reader threads, {total} reads in all, {len(readers.failed)} failed; "
        f"CHECK_INTERVAL {args.interval:g} s, DRAIN_SECONDS {args.drain:g} s; dnsmasq SRV "
        f"records, TTL 0"
    )
    for failure in readers.failed[:5]:
        print(f"  failed: {failure}")
    print(describe(len(cluster.replicas)))


if __name__ == "__main__":
    main()
