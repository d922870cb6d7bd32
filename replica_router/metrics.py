"""Prometheus metrics: reads and writes routed, pins, failovers, and each node's health.

This module needs the ``metrics`` extra (prometheus-client). Nothing imports it
unless ``REPLICA_ROUTER["METRICS"]`` is on, so without the extra the router
runs exactly as if metrics did not exist. docs/metrics.md lists every metric.

Counting and exporting are kept apart, so that routing a read stays cheap:

* The router, the pinning middleware and the failover backend count events in
  :class:`itertools.count` objects: calling the ``__next__`` of one is a single
  C call, atomic under the GIL, with no lock and no prometheus-client code on
  the path of a query.
* :class:`ReplicaRouterCollector`, registered once in prometheus-client's
  default ``REGISTRY``, reads those counts, the health monitor's last snapshot
  and this process's pool statistics when the registry is scraped, and only
  then: nothing runs between scrapes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from django.core.exceptions import ImproperlyConfigured
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector

from replica_router.conf import get_config
from replica_router.health.model import NodeStatus, Snapshot, State
from replica_router.report import pool_stats

__all__ = ["READ_REASONS", "Counters", "ReplicaRouterCollector", "register"]

#: The ``reason`` label of ``replica_router_reads_total``: why a read went where it went.
READ_REASONS: Final = (
    "replica",  # the weighted schedule picked a replica in rotation
    "use_primary",  # under use_primary()
    "transaction",  # inside atomic() on the primary
    "primary_only",  # the model or app is in PRIMARY_ONLY
    "pinned",  # read-your-writes: this request wrote, or no replica has its write yet
    "monotonic",  # monotonic reads: the replica this context read from cannot serve
    "max_lag",  # a max_lag() budget: no replica in rotation could keep it, or one out of it could
    "fallback",  # no replica in rotation: where FALLBACK sent it
    "no_replicas",  # REPLICAS is empty
    "migrate",  # while migrate runs
)


class _Family:
    """The counts of one counter family: one itertools.count per set of label values.

    A count is read with ``next()`` too, the only way its documented API has,
    so each read adds one; the family remembers how many times it has read each
    count and takes those off.
    """

    __slots__ = ("_counts", "_reads", "_reads_lock")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, ...], itertools.count[int]] = {}
        self._reads: dict[tuple[str, ...], int] = {}
        self._reads_lock = threading.Lock()

    def counter(self, *labels: str) -> Callable[[], int]:
        """The ``__next__`` of the count for ``labels``, made on first use."""
        count = self._counts.get(labels)
        if count is None:
            count = self._counts.setdefault(labels, itertools.count())
        return count.__next__

    def values(self) -> list[tuple[tuple[str, ...], int]]:
        """Each set of label values with its count so far."""
        values = []
        # dict.copy() is one C call, so a count added meanwhile cannot break the loop.
        with self._reads_lock:  # two scrapes at once must not both take off one read
            for labels, count in self._counts.copy().items():
                reads = self._reads.get(labels, 0)
                values.append((labels, next(count) - reads))
                self._reads[labels] = reads + 1
        return values


# The counts of this process. They outlive settings changes, as a Prometheus
# counter must: it only goes up until the process ends.
_READS = _Family()  # alias, reason
_WRITES = _Family()  # alias
_PINS_SET = _Family()
_PINS_HONOURED = _Family()
_FAILOVERS = _Family()  # from_alias, to_alias
_CONFLICTS = _Family()  # alias


class Counters:
    """What the router, the middleware and the failover backend count, for one config.

    The router builds one when ``METRICS`` is on and calls the attributes below
    on every read and write: each is the ``__next__`` of an itertools.count,
    looked up here once, so counting is one C call. Rarer events go through
    :meth:`read` and :meth:`failover`.
    """

    __slots__ = (
        "pins_honoured",
        "pins_set",
        "reads_in_transaction",
        "reads_on_replica",
        "reads_pinned",
        "reads_primary_only",
        "reads_use_primary",
        "writes",
    )

    def __init__(self, *, primary: str, replicas: Iterable[str]) -> None:
        self.reads_use_primary = _READS.counter(primary, "use_primary")
        self.reads_primary_only = _READS.counter(primary, "primary_only")
        self.reads_in_transaction = _READS.counter(primary, "transaction")
        self.reads_pinned = _READS.counter(primary, "pinned")
        #: Replica alias -> the count of reads the weighted schedule sent it.
        self.reads_on_replica: Mapping[str, Callable[[], int]] = _ReplicaReads(
            {alias: _READS.counter(alias, "replica") for alias in replicas}
        )
        self.writes = _WRITES.counter(primary)
        #: A response carried a new pin cookie (the request wrote).
        self.pins_set = _PINS_SET.counter()
        #: A request came with a valid pin cookie.
        self.pins_honoured = _PINS_HONOURED.counter()

    @staticmethod
    def read(alias: str, reason: str) -> None:
        """Count a read routed to ``alias`` for ``reason`` (one of READ_REASONS)."""
        _READS.counter(alias, reason)()

    @staticmethod
    def failover(from_alias: str, to_alias: str) -> None:
        """Count a connection made to ``to_alias`` because ``from_alias`` failed."""
        _FAILOVERS.counter(from_alias, to_alias)()

    @staticmethod
    def recovery_conflict(alias: str) -> None:
        """Count a read ``alias`` cancelled for a conflict with recovery (run again elsewhere)."""
        _CONFLICTS.counter(alias)()


class _ReplicaReads(dict[str, Callable[[], int]]):
    """Replica alias -> its read counter; a replica discovery adds gets one on
    its first read (a dict lookup costs the same either way)."""

    def __missing__(self, alias: str) -> Callable[[], int]:
        counter = self[alias] = _READS.counter(alias, "replica")
        return counter


class ReplicaRouterCollector(Collector):
    """Reports the counts, the monitor's snapshot and the pools when scraped.

    ``snapshot()`` returns the current monitor's last snapshot, or None.
    """

    def __init__(self, *, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        # Names only: the registry checks them for clashes at registration,
        # which then does no work (no config, no monitor).
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        try:
            config = get_config()
        except ImproperlyConfigured:  # manage.py check reports it
            return []
        if not config.metrics:
            return []
        families = _families()
        for name, family in (
            ("reads", _READS),
            ("writes", _WRITES),
            ("pins_set", _PINS_SET),
            ("pins_honoured", _PINS_HONOURED),
            ("failovers", _FAILOVERS),
            ("recovery_conflicts", _CONFLICTS),
        ):
            metric = families[name]
            assert isinstance(metric, CounterMetricFamily)
            for labels, value in family.values():
                metric.add_metric(list(labels), value)

        snapshot = self._snapshot()
        if snapshot is not None:
            _add_health(families, snapshot.nodes)
        for alias in [config.primary, *config.replicas]:
            stats = pool_stats(alias)
            if stats is not None:
                for field in ("size", "idle", "waiting"):
                    _gauge(families, f"pool_{field}").add_metric([alias], stats[field])
        return list(families.values())


def _gauge(families: Mapping[str, Metric], name: str) -> GaugeMetricFamily:
    metric = families[name]
    assert isinstance(metric, GaugeMetricFamily)
    return metric


def _add_health(families: Mapping[str, Metric], nodes: Iterable[NodeStatus]) -> None:
    for node in nodes:
        for state in State:
            _gauge(families, "node_state").add_metric(
                [node.alias, node.role, str(state)], 1.0 if node.state is state else 0.0
            )
        _gauge(families, "node_in_rotation").add_metric([node.alias], float(node.in_rotation))
        if node.rtt is not None:
            _gauge(families, "probe_rtt_seconds").add_metric([node.alias], node.rtt)
        if node.lag_seconds is not None:
            _gauge(families, "replica_lag_seconds").add_metric([node.alias], node.lag_seconds)
        if node.lag_bytes is not None:
            _gauge(families, "replica_lag_bytes").add_metric([node.alias], node.lag_bytes)
        if node.recovery_conflicts is not None:
            conflicts = families["replica_recovery_conflicts"]
            assert isinstance(conflicts, CounterMetricFamily)
            conflicts.add_metric([node.alias], node.recovery_conflicts)


_ALIAS: Final = ("alias",)
#: Every family: key -> (kind, name, help, labels). docs/metrics.md describes each.
_FAMILIES: Final[Mapping[str, tuple[Callable[..., Metric], str, str, tuple[str, ...]]]] = {
    "reads": (
        CounterMetricFamily,
        "replica_router_reads",
        "Reads routed, by the alias chosen and why it was chosen.",
        ("alias", "reason"),
    ),
    "writes": (
        CounterMetricFamily,
        "replica_router_writes",
        "Writes routed (to the primary).",
        _ALIAS,
    ),
    "pins_set": (
        CounterMetricFamily,
        "replica_router_pins_set",
        "Responses that set a read-your-writes pin cookie (the request wrote).",
        (),
    ),
    "pins_honoured": (
        CounterMetricFamily,
        "replica_router_pins_honoured",
        "Requests that came with a valid read-your-writes pin cookie.",
        (),
    ),
    "failovers": (
        CounterMetricFamily,
        "replica_router_failovers",
        "Connections made to a stand-in because a replica could not give one.",
        ("from_alias", "to_alias"),
    ),
    "recovery_conflicts": (
        CounterMetricFamily,
        "replica_router_recovery_conflicts",
        "Reads a replica cancelled for a conflict with recovery, then run again elsewhere.",
        _ALIAS,
    ),
    "replica_recovery_conflicts": (
        CounterMetricFamily,
        "replica_router_replica_recovery_conflicts",
        "Queries the replica cancelled for conflicts with WAL replay, as of the last probe.",
        _ALIAS,
    ),
    "node_state": (
        GaugeMetricFamily,
        "replica_router_node_state",
        "1 for the state the health monitor gives the node, 0 for the other states.",
        ("alias", "role", "state"),
    ),
    "node_in_rotation": (
        GaugeMetricFamily,
        "replica_router_node_in_rotation",
        "1 when the node serves reads (the primary: when it is reachable), else 0.",
        _ALIAS,
    ),
    "replica_lag_seconds": (
        GaugeMetricFamily,
        "replica_router_replica_lag_seconds",
        "Replication lag in seconds, as of the last probe.",
        _ALIAS,
    ),
    "replica_lag_bytes": (
        GaugeMetricFamily,
        "replica_router_replica_lag_bytes",
        "Bytes of WAL the replica has yet to replay, as of the last probe.",
        _ALIAS,
    ),
    "probe_rtt_seconds": (
        GaugeMetricFamily,
        "replica_router_probe_rtt_seconds",
        "Round-trip of the last health probe, connecting included when it had to connect.",
        _ALIAS,
    ),
    "pool_size": (
        GaugeMetricFamily,
        "replica_router_pool_size",
        "Connections held by this process's pool for the alias, in use or idle.",
        _ALIAS,
    ),
    "pool_idle": (
        GaugeMetricFamily,
        "replica_router_pool_idle",
        "Connections idle in this process's pool for the alias.",
        _ALIAS,
    ),
    "pool_waiting": (
        GaugeMetricFamily,
        "replica_router_pool_waiting",
        "Requests waiting for a connection from this process's pool for the alias.",
        _ALIAS,
    ),
}


def _families() -> dict[str, Metric]:
    """Every family, empty."""
    return {
        key: kind(name, documentation, labels=list(labels))
        for key, (kind, name, documentation, labels) in _FAMILIES.items()
    }


_registered: ReplicaRouterCollector | None = None
_register_lock = threading.Lock()


def register(*, snapshot: Callable[[], Snapshot | None]) -> ReplicaRouterCollector:
    """Add the collector to prometheus-client's default ``REGISTRY``, once per process.

    Called through :func:`replica_router.runtime.register_metrics`: by the router
    when it first routes with ``METRICS`` on, the app at startup and the metrics
    view when it serves; calling it again is harmless.
    """
    global _registered
    with _register_lock:
        if _registered is None:
            collector = ReplicaRouterCollector(snapshot=snapshot)
            REGISTRY.register(collector)
            _registered = collector
        return _registered
