"""Staleness budgets (``max_lag``) against replicas that really lag.

A heartbeat row is stamped with the primary's clock every 10 ms. A read on any
node of ``clock_timestamp() - at`` is how stale that node is at that moment
(to within one stamp), measured by the node itself; every node runs on this
machine's clock. Reads are routed by the router, as Django routes a query, and
then run on the node it chose.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from replica_router import ReplicaRouter, max_lag
from replica_router.health.model import State
from replica_router.runtime import get_monitor
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.polling import wait_for
from testbed.testapp.models import Author

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

STAMP_INTERVAL = 0.01
# A probe gap of 0.5 s: budgets from about half a second up can be promised.
FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.3, "RECOVERY_CHECKS": 2}
GAP = FAST["CHECK_INTERVAL"] + FAST["CHECK_TIMEOUT"]


class Heartbeat:
    """Stamps ``replica_router_heartbeat.at`` on the primary every 10 ms."""

    TABLE = "replica_router_heartbeat"

    def __init__(self, cluster: Cluster, dbname: str) -> None:
        self.conninfo = cluster.conninfo(PRIMARY, dbname)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(STAMP_INTERVAL):
                conn.execute(f"UPDATE {self.TABLE} SET at = clock_timestamp()")

    def __enter__(self) -> Heartbeat:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (at timestamptz NOT NULL)")
            conn.execute(f"DELETE FROM {self.TABLE}")
            conn.execute(f"INSERT INTO {self.TABLE} VALUES (clock_timestamp())")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def staleness(alias: str) -> float:
    """How far behind the primary's stamps ``alias`` is now, in seconds."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT extract(epoch FROM clock_timestamp() - at)::float FROM {Heartbeat.TABLE}"
        )
        (seconds,) = cursor.fetchone()
    return float(seconds)


def routed_reads(n: int) -> list[tuple[str, float]]:
    """``n`` reads routed as Django routes them: (node, its staleness then)."""
    router = ReplicaRouter()
    reads = []
    for _ in range(n):
        alias = router.db_for_read(Author)
        reads.append((alias, staleness(alias)))
    return reads


@pytest.fixture
def heartbeat(replica_cluster: Cluster) -> Iterator[Heartbeat]:
    dbname = connections["default"].settings_dict["NAME"]
    with Heartbeat(replica_cluster, dbname) as beat:
        replica_cluster.wait_replayed()
        yield beat


def _settings(**overrides: object) -> override_settings:
    return override_settings(
        REPLICA_ROUTER={**settings.REPLICA_ROUTER, **FAST, **overrides},
    )


def _state(alias: str) -> State:
    monitor = get_monitor()
    assert monitor is not None
    return monitor.snapshot.node(alias).state


@db
def test_a_tight_budget_never_reads_from_a_replica_that_could_exceed_it(heartbeat, delay_replica):
    # replica_1 applies WAL 1.5 s late: within MAX_LAG_SECONDS, so in rotation,
    # but it cannot keep a 1.2 s budget. replica_2 is current.
    delay_replica("replica_1", 1.5)
    budget = 1.2
    with _settings(MAX_LAG_SECONDS=10.0):
        ReplicaRouter().db_for_read(Author)  # starts the monitor
        wait_for(lambda: (get_monitor().snapshot.node("replica_1").lag_seconds or 0) > 1.3)
        assert _state("replica_1") is State.HEALTHY

        plain = routed_reads(100)
        with max_lag(budget):
            bounded = routed_reads(200)
        with max_lag(GAP - 0.1):  # shorter than the probe gap: no replica can promise it
            unpromisable = routed_reads(20)

    # Without a budget, reads reach the late replica and are older than the budget:
    # the check below can fail.
    assert max(stale for _, stale in plain) > budget
    # One stamp interval of slack: a node that has the latest stamp can still
    # be that much behind the primary's clock.
    worst = max(stale for _, stale in bounded)
    assert worst <= budget + STAMP_INTERVAL, sorted(bounded, key=lambda r: -r[1])[:5]
    served = Counter(alias for alias, _ in bounded)
    assert served["replica_2"] > 0 and served["replica_1"] == 0, served
    assert {alias for alias, _ in unpromisable} == {"default"}


@db
def test_a_loose_budget_reads_from_a_replica_out_of_rotation_for_lag(heartbeat, pause_replica):
    # replica_1's replay is paused, so its lag passes MAX_LAG_SECONDS and the
    # monitor takes it out of rotation; a report that tolerates ten minutes
    # may still read there.
    with _settings(MAX_LAG_SECONDS=2.0):
        ReplicaRouter().db_for_read(Author)
        pause_replica("replica_1")
        wait_for(lambda: _state("replica_1") is State.LAGGING, timeout=15)

        plain = routed_reads(40)
        with max_lag(600):
            report = routed_reads(40)
        with max_lag(1.5):
            fresh = routed_reads(40)

    assert "replica_1" not in {alias for alias, _ in plain}
    served = Counter(alias for alias, _ in report)
    assert served["replica_1"] > 0 and "default" not in served, served
    assert max(stale for _, stale in report) <= 600
    assert max(stale for _, stale in fresh) <= 1.5 + STAMP_INTERVAL
    assert "replica_1" not in {alias for alias, _ in fresh}
