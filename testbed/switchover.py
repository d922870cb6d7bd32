"""Read and write traffic through the router while a Patroni cluster changes leader.

Shared by tests/patroni and bench/bench_topology.py. Each loop of a thread is
one request: a request boundary (``close_old_connections``), then the work.

* Readers read through the router and note which node served each read.
* The writer writes a row in a ``causal()`` context, as
  ``PrimaryPinningMiddleware`` gives a request, and reads it straight back:
  a read that does not find the row is stale (read-your-writes broken).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DatabaseError, close_old_connections, connections

from replica_router import ReplicaRouter, causal
from replica_router.runtime import load
from replica_router.testing.patroni import PatroniCluster
from testbed.polling import wait_for
from testbed.testapp.models import Author


def in_rotation() -> frozenset[str]:
    # A routed read starts the health monitor, which follows discovery.
    ReplicaRouter().db_for_read(Author)
    return load().balancer.rotation


def alias_of(port: int) -> str:
    """The alias discovery gives the node on ``port``."""
    return f"127.0.0.1:{port}"


@dataclass
class Traffic:
    """Reader threads and one writer thread; a context manager."""

    readers: int = 4
    reads: Counter[str] = field(default_factory=Counter)
    failed_reads: list[str] = field(default_factory=list)
    #: monotonic times of each write that committed.
    writes: list[float] = field(default_factory=list)
    failed_writes: list[tuple[float, str]] = field(default_factory=list)
    stale_reads: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read) for _ in range(self.readers)]
        self._threads.append(threading.Thread(target=self._write))
        self._lock = threading.Lock()

    def _read(self) -> None:
        router = ReplicaRouter()
        try:
            while not self._stop.is_set():
                close_old_connections()
                alias = router.db_for_read(Author)
                try:
                    Author.objects.using(alias).filter(name="nobody").count()
                except DatabaseError as exc:
                    with self._lock:
                        self.failed_reads.append(f"{alias}: {type(exc).__name__}: {exc}")
                else:
                    with self._lock:
                        self.reads[alias] += 1
                time.sleep(0.005)
        finally:
            connections.close_all()

    def _write(self) -> None:
        serial = 0
        try:
            while not self._stop.is_set():
                close_old_connections()
                serial += 1
                with causal():
                    try:
                        author = Author.objects.create(name=f"switchover {serial}")
                    except DatabaseError as exc:
                        self.failed_writes.append(
                            (time.monotonic(), f"{type(exc).__name__}: {exc}".strip())
                        )
                        time.sleep(0.05)
                        continue
                    self.writes.append(time.monotonic())
                    try:
                        found = Author.objects.filter(pk=author.pk).exists()
                    except DatabaseError as exc:
                        with self._lock:
                            self.failed_reads.append(f"read-back: {type(exc).__name__}: {exc}")
                        continue
                    if not found:
                        self.stale_reads += 1
                time.sleep(0.01)
        finally:
            connections.close_all()

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def total_reads(self) -> int:
        with self._lock:
            return sum(self.reads.values())

    def write_outage(self, since: float) -> float:
        """The longest wait between two committed writes after ``since``: the
        time no write could commit, whether writes failed or hung meanwhile."""
        before = [at for at in self.writes if at < since][-1:]
        times = before + [at for at in self.writes if at >= since]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        return max(gaps, default=0.0)


def replica_aliases(patroni: PatroniCluster) -> frozenset[str]:
    return frozenset(alias_of(patroni.nodes[name].port) for name in patroni.replicas())


def rotation_follows_the_cluster(patroni: PatroniCluster) -> bool:
    return in_rotation() == replica_aliases(patroni)


@dataclass
class Change:
    """What happened to the traffic while the leader changed."""

    traffic: Traffic
    old: str
    new: str
    began: float
    #: What ``change()`` returned: the seconds patronictl took, for a switchover.
    took: object

    def line(self, what: str) -> str:
        traffic = self.traffic
        took = f" (patronictl took {self.took:.1f} s)" if isinstance(self.took, float) else ""
        return (
            f"{what}: reads {traffic.total_reads()}, failed {len(traffic.failed_reads)}; "
            f"writes {len(traffic.writes)}, failed {len(traffic.failed_writes)}; "
            f"write outage {traffic.write_outage(self.began):.1f} s{took}; "
            f"stale reads {traffic.stale_reads}"
        )


def change_under_load(patroni: PatroniCluster, change: Callable[[], object]) -> Change:
    """Run ``change()``, which changes the leader, under traffic, and keep the
    traffic going until writes commit on the new leader and the promoted node
    has left rotation (and, if the old leader is up, it streams again)."""
    wait_for(lambda: rotation_follows_the_cluster(patroni), timeout=60)
    old = patroni.leader()
    with Traffic() as traffic:
        wait_for(lambda: len(traffic.writes) > 20 and traffic.total_reads() > 100)
        began = time.monotonic()
        took = change()
        wait_for(lambda: patroni.leader() not in (None, old), timeout=90)
        new = patroni.leader()
        wait_for(lambda: any(at > began for at in traffic.writes[-1:]), timeout=60)
        if not patroni.node_down(old):
            patroni.wait_streaming(timeout=120)
        wait_for(lambda: alias_of(patroni.nodes[new].port) not in in_rotation(), timeout=30)
        written = len(traffic.writes)
        wait_for(lambda: len(traffic.writes) > written + 20)
    assert new is not None and old is not None
    return Change(traffic, old, new, began, took)
