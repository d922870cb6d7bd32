"""The health monitor's connections on each node, counted in ``pg_stat_activity``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from replica_router.health.probe import APPLICATION_NAME
from replica_router.testing.cluster import Cluster


def monitor_connections(cluster: Cluster, dbname: str) -> dict[str, int | None]:
    """Monitor connections to ``dbname`` on each node (None: the node is down)."""
    counts: dict[str, int | None] = {}
    for node in cluster.nodes:
        try:
            with cluster.connect(node, dbname) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database()",
                    [APPLICATION_NAME],
                ).fetchone()
            counts[node] = int(row[0]) if row else 0
        except psycopg.OperationalError:
            counts[node] = None
    return counts


@dataclass
class Settled:
    #: Seconds until every node first had the expected count.
    seconds: float
    #: Counts taken afterwards, spread over two intervals.
    samples: list[dict[str, int | None]]


def settle_connections(
    cluster: Cluster,
    dbname: str,
    expected: int,
    *,
    interval: float,
    samples: int = 5,
    timeout: float = 30.0,
) -> Settled:
    """Wait until every node has ``expected`` monitor connections, then take
    ``samples`` counts spread over ``2 * interval`` (the caller asserts they
    all say ``expected``)."""
    started = time.monotonic()
    deadline = started + timeout
    last: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        last = monitor_connections(cluster, dbname)
        if all(count == expected for count in last.values()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"monitor connections never all {expected}: last {last}")
    seconds = time.monotonic() - started
    taken = []
    for _ in range(samples):
        time.sleep(2 * interval / samples)
        taken.append(monitor_connections(cluster, dbname))
    return Settled(seconds, taken)


def per_node(samples: Iterable[dict[str, int | None]]) -> dict[str, set[int | None]]:
    """Every count seen on each node."""
    seen: dict[str, set[int | None]] = {}
    for sample in samples:
        for node, count in sample.items():
            seen.setdefault(node, set()).add(count)
    return seen
