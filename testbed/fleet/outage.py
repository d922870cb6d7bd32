"""Redis stopped under light load: the monitor connections while it is down, and after."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from replica_router.testing.cluster import Cluster
from replica_router.testing.redis_server import RedisServer
from testbed.fleet.connections import settle_connections
from testbed.fleet.hosts import Fleet, all_states, worker_count
from testbed.fleet.load import ReadLoad


@dataclass
class StoreOutage:
    #: Monitor connections per node sampled while Redis was down, and after.
    down: list[dict[str, int | None]]
    after: list[dict[str, int | None]]
    #: Seconds from stopping Redis until every node had one connection per
    #: worker, and from starting it until each had one again.
    fallback_seconds: float
    recovery_seconds: float
    workers_in_fallback: int
    reads: int
    failures: list[str]


def measure_store_outage(
    fleets: Sequence[Fleet],
    redis: RedisServer,
    cluster: Cluster,
    dbname: str,
    *,
    interval: float,
    down_for: float | None = None,
) -> StoreOutage:
    """Stop Redis under light load for ``down_for`` seconds (default 5
    intervals, at least), then start it again."""
    workers = worker_count(fleets)
    with ReadLoad(fleets) as load:
        time.sleep(2 * interval)
        stopped = time.monotonic()
        redis.halt()
        try:
            down = settle_connections(cluster, dbname, workers, interval=interval)
            in_fallback = sum(s["fallback"] for s in all_states(fleets).values())
            remaining = (down_for or 5 * interval) - (time.monotonic() - stopped)
            time.sleep(max(0.0, remaining))
        finally:
            if not redis.running:
                redis.start()
        after = settle_connections(cluster, dbname, 1, interval=interval)
    return StoreOutage(
        down=down.samples,
        after=after.samples,
        fallback_seconds=down.seconds,
        recovery_seconds=after.seconds,
        workers_in_fallback=in_fallback,
        reads=load.reads,
        failures=load.failures,
    )
