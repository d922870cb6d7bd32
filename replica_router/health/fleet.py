"""The health monitor of a process in a fleet: one prober, many readers.

A :class:`SharedMonitor` takes a turn every fifth of ``CHECK_INTERVAL`` (give
or take a jitter). At each turn it claims the lease in the shared store
(:mod:`~replica_router.health.sharing`):

* **holding it**, it probes every ``CHECK_INTERVAL`` exactly as a monitor of its
  own would, and publishes the snapshot, the replicas' freshness and their
  replay positions;
* **not holding it**, it probes nothing, closes its probe connections, and
  routes by the snapshot the holder published;
* **either way**, it takes the failure reports of every process into account:
  a replica that some process could not connect to, or whose connection broke,
  leaves rotation here too, until a snapshot published after the report says
  otherwise.

If the store cannot be reached (or does not answer within ``CHECK_TIMEOUT``)
the process probes for itself, as with ``HEALTH_SHARING = "process"``, and
says so once in the log; once the store answers again, it says so once more
and takes part in the lease again. Reads never wait on the store: the router
only reads what this monitor last applied.

Holding the lease or not, what it routes by is a
:class:`~replica_router.health.monitor.Published` value, applied by the
monitor's one ``_publish``: from its own probes, or from the holder's document.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from replica_router.balancer import Balancer
from replica_router.conf import RouterConfig
from replica_router.health.model import Freshness, NodeStatus, Sharing, Snapshot, State
from replica_router.health.monitor import Monitor, Published
from replica_router.health.policy import Change, utc_now
from replica_router.health.sharing import Guarded, Holder, Store, StoreUnavailable

__all__ = ["SharedMonitor"]

logger = logging.getLogger("replica_router")

#: Turns per CHECK_INTERVAL: how often a reader looks at the store, and how
#: often the holder renews its lease.
TURNS_PER_INTERVAL = 5
DOCUMENT_VERSION = 1


class SharedMonitor(Monitor):
    """A :class:`Monitor` that probes only while it holds the fleet's lease.

    ``clock`` is the wall clock of the times shared with other processes (and
    hosts), ``monotonic`` this process's own; tests pass clocks of their own.
    """

    def __init__(
        self,
        *,
        config: RouterConfig,
        store: Store,
        mode: str,
        balancer: Balancer | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(config=config, balancer=balancer, monotonic=monotonic, **kwargs)
        self.mode = mode
        self._clock = clock
        self._store = store
        self._guarded = Guarded(store, deadline=config.check_timeout)
        self._me = Holder.me()
        self._probing = False
        self._fallback = False
        self._next_cycle_at = 0.0
        self._lease: dict[str, Any] | None = None
        self._document: dict[str, Any] | None = None
        #: Reports made in this process, not yet sent to the store.
        self._outbox: dict[str, tuple[float, str]] = {}
        #: Reports known here (this process's and the store's), by alias.
        self._reports: dict[str, tuple[float, str]] = {}
        with self._lock:  # the first snapshot says who probes, too
            self._publish(self._measured())

    # -- the lease ---------------------------------------------------------

    @property
    def turn_seconds(self) -> float:
        return self.config.check_interval / TURNS_PER_INTERVAL

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal: longer than the longest gap
        between two renewals (a probe cycle plus a turn), short enough that a
        dead holder is replaced well within two intervals."""
        return self.config.check_timeout + 2.5 * self.turn_seconds

    def stop(self) -> None:
        super().stop()
        self._guarded.close()

    def after_fork(self) -> None:
        """In a forked child: a new process, which holds no lease yet, with
        the store's thread of its own (see :meth:`Monitor.after_fork`)."""
        super().after_fork()
        self._guarded.after_fork()
        self._me = Holder.me()
        self._probing = self._fallback = False
        self._outbox = {}  # the parent sends the reports it made

    def _turn(self) -> float:
        try:
            mine, self._lease = self._guarded.call(self._store.claim, self._me, self.lease_seconds)
            self._send_reports()
        except StoreUnavailable as exc:
            return self._probe_alone(exc)
        if self._fallback:
            self._fallback = False
            logger.warning("replica_router: the %s health store answers again", self.mode)
        if mine:
            self._hold()
        else:
            try:
                self._read()
            except StoreUnavailable as exc:
                return self._probe_alone(exc)
        return self.turn_seconds

    def _probe_alone(self, exc: StoreUnavailable) -> float:
        if not self._fallback:
            self._fallback = True
            logger.warning(
                "replica_router: cannot reach the %s health store (%s); "
                "this process probes for itself until it can",
                self.mode,
                exc,
            )
        if not self._probing:
            self._take_over()
        self._probing = True
        self._cycle_when_due()
        return self.turn_seconds

    def _hold(self) -> None:
        if not self._probing:
            self._probing = True
            self._take_over()
            logger.info("replica_router: this process now probes for the fleet")
        if self._cycle_when_due():
            try:
                self._guarded.call(self._store.publish, self._own_document())
            except StoreUnavailable as exc:
                self._probe_alone(exc)

    def _cycle_when_due(self) -> bool:
        if self.follow_discovery():
            self._next_cycle_at = 0.0  # probe a new replica now, not a cycle later
        now = self._monotonic()
        if now < self._next_cycle_at:
            return False
        self._next_cycle_at = now + self.config.check_interval
        self._take_reports()
        self.run_cycle()
        return True

    def _take_over(self) -> None:
        """Start probing from where the last holder left off: its states, so
        that a replica it had taken out still needs RECOVERY_CHECKS to return."""
        document = self._document
        self._next_cycle_at = 0.0
        if document is None:
            return
        with self._lock:
            for row in document.get("nodes", []):
                tracker = self._trackers.get(row.get("alias"))
                if tracker is None or tracker.state is not State.UNKNOWN:
                    continue
                tracker.state = State(row["state"])
                tracker.in_rotation = bool(row["in_rotation"])
                tracker.reason = str(row["reason"])

    def _stand_down(self) -> None:
        if self._probing and not self._fallback:
            logger.info("replica_router: another process probes for the fleet now")
        self._probing = False
        self._prober.close()  # its connections: one prober per fleet holds them

    # -- publishing and reading ----------------------------------------------

    def _own_document(self) -> dict[str, Any]:
        """What this process, holding the lease, publishes for the others."""
        now_wall, now = self._clock(), self._monotonic()
        snapshot = self.snapshot
        return {
            "version": DOCUMENT_VERSION,
            "holder": self._me.as_dict(),
            "published_at": now_wall,
            "taken_at": snapshot.taken_at.isoformat(),
            "nodes": [_node_json(node) for node in snapshot.nodes],
            # Monotonic clocks are per process: pass the time of measurement on
            # the wall clock, which the hosts of a fleet share.
            "freshness": {
                alias: [f.lag_seconds, now_wall - (now - f.measured_at), f.in_rotation]
                for alias, f in self.freshness.items()
            },
            "replay_positions": dict(self.replay_positions),
            "topology": None if self.discovery is None else self.discovery.shared(),
        }

    def _read(self) -> None:
        if self._probing:
            self._stand_down()
        document = self._guarded.call(self._store.read)
        self._read_reports()
        if document is None or document.get("version") != DOCUMENT_VERSION:
            return
        self._document = document
        if document.get("topology") is not None:
            self.follow_discovery(document["topology"])
        self._apply(document)

    def _apply(self, document: dict[str, Any]) -> None:
        """Route by ``document``, with the failure reports made since it was published."""
        published_at = float(document["published_at"])
        reported = {
            alias: (at, reason)
            for alias, (at, reason) in self._reports.items()
            if at > published_at and alias in self.config.replicas
        }
        nodes = tuple(
            _reported(_node_from_json(row), reported.get(row["alias"])) for row in document["nodes"]
        )
        now_wall, now = self._clock(), self._monotonic()
        published = Published(
            snapshot=Snapshot(
                nodes=nodes,
                taken_at=datetime.fromisoformat(document["taken_at"]),
                sharing=self._sharing(),
                discovery=None if self.discovery is None else self.discovery.state(),
            ),
            freshness={
                alias: Freshness(float(lag), now - (now_wall - float(at)), bool(in_rotation))
                for alias, (lag, at, in_rotation) in document.get("freshness", {}).items()
                if alias not in reported
            },
            replay_positions={
                alias: int(lsn) for alias, lsn in document.get("replay_positions", {}).items()
            },
        )
        with self._lock:
            before = {node.alias: node.state for node in self.snapshot.nodes}
            self._publish(published)
            self.cycles += 1
        changes: list[Change | None] = [
            Change(node.alias, before[node.alias], node.state, node.reason)
            for node in nodes
            if before.get(node.alias, node.state) is not node.state
        ]
        self._announce(changes)

    def _sharing(self) -> Sharing:
        lease = self._lease or {}
        holder = lease.get("holder") or {}
        published = self._document.get("published_at") if self._document else None
        return Sharing(
            mode=self.mode,
            probing_here=self._probing,
            fallback=self._fallback,
            prober_host=str(holder["host"]) if holder else None,
            prober_pid=int(holder["pid"]) if holder else None,
            lease_since=float(lease["since"]) if "since" in lease else None,
            published_at=self._clock() if self._probing else published,
        )

    # -- failure reports ------------------------------------------------------

    def report_failure(self, alias: str, error: BaseException | str) -> None:
        if alias in self.config.replicas:
            self._outbox[alias] = (self._clock(), "connection failed in another process")
            self._reports[alias] = self._outbox[alias]
        if self._probing or self._document is None:
            super().report_failure(alias, error)
        else:
            self._apply(self._document)

    def _send_reports(self) -> None:
        for alias, (_, reason) in list(self._outbox.items()):
            self._guarded.call(self._store.report, alias, reason)
            del self._outbox[alias]

    def _take_reports(self) -> None:
        """As the prober: take replicas other processes found dead out now."""
        replicas = list(self.config.replicas)
        try:
            reports = self._guarded.call(self._store.reports, replicas)
        except StoreUnavailable:
            return
        for alias, report in reports.items():
            if self._reports.get(alias) != report:
                self._reports[alias] = report
                super().report_failure(alias, report[1])

    def _read_reports(self) -> None:
        reports = self._guarded.call(self._store.reports, list(self.config.replicas))
        self._reports.update(reports)


def _node_json(node: NodeStatus) -> dict[str, Any]:
    row = asdict(node)
    row["state"] = str(node.state)
    for name in ("since", "checked_at"):
        value = row[name]
        row[name] = value.isoformat() if value is not None else None
    return row


def _node_from_json(row: dict[str, Any]) -> NodeStatus:
    values = dict(row)
    values["state"] = State(values["state"])
    for name in ("since", "checked_at"):
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    return NodeStatus(**values)


def _reported(node: NodeStatus, report: tuple[float, str] | None) -> NodeStatus:
    if report is None or node.state is State.DOWN:
        return node
    return replace(
        node,
        state=State.DOWN,
        in_rotation=False,
        reason=f"reported by another process: {report[1]}",
        since=utc_now(),
    )
