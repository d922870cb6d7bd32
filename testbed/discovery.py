"""What the discovery tests and benchmark share: DNS records for the cluster's
replicas, and reader threads that note where each read went."""

from __future__ import annotations

import threading
import time
from collections import Counter

from django.db import close_old_connections, connections

from replica_router import ReplicaRouter
from replica_router.runtime import load
from replica_router.testing.cluster import Cluster
from replica_router.testing.dns_server import DnsServer
from testbed.testapp.models import Author

#: The SRV name that lists the replicas.
NAME = "_postgresql._tcp.replicas.test"


def serve(dns: DnsServer, cluster: Cluster, *replicas: str) -> None:
    """List ``replicas`` (cluster node names) by SRV records from now on."""
    dns.serve(
        srv={NAME: [(f"{name.replace('_', '-')}.test", cluster.port(name)) for name in replicas]},
        hosts={f"{name.replace('_', '-')}.test": "127.0.0.1" for name in cluster.replicas},
    )


def alias_of(cluster: Cluster, replica: str) -> str:
    """The alias discovery gives a node of the cluster."""
    return f"127.0.0.1:{cluster.port(replica)}"


def in_rotation() -> frozenset[str]:
    # A routed read starts the health monitor, which follows discovery.
    ReplicaRouter().db_for_read(Author)
    return load().balancer.rotation


class Readers:
    """Threads that read through the router and note each read's alias."""

    def __init__(self, threads: int = 4) -> None:
        self.reads: list[tuple[float, str]] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read) for _ in range(threads)]

    def _read(self) -> None:
        router = ReplicaRouter()
        try:
            while not self._stop.is_set():
                close_old_connections()  # a request boundary
                picked_at = time.monotonic()
                alias = router.db_for_read(Author)
                try:
                    with connections[alias].cursor() as cursor:
                        cursor.execute("SELECT count(*) FROM testapp_author")
                        cursor.fetchone()
                except Exception as exc:
                    self.failed.append(f"{alias}: {exc}")
                self.reads.append((picked_at, alias))
                time.sleep(0.002)
        finally:
            connections.close_all()

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def served(self, since: float = 0.0) -> Counter[str]:
        return Counter(alias for at, alias in list(self.reads) if at >= since)
