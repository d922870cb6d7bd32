"""What the health monitor knows: node states, probe results, the published snapshot.

Plain immutable values with no I/O: the monitor builds them, and the router, the
views, the management command and the metrics read them.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from replica_router.lsn import format_lsn

__all__ = [
    "OVERALL_CODES",
    "Discovered",
    "Freshness",
    "NodeStatus",
    "Probe",
    "Sharing",
    "Snapshot",
    "State",
]


class State(enum.StrEnum):
    """Where a node stands; only ``healthy`` replicas serve reads."""

    HEALTHY = "healthy"
    LAGGING = "lagging"
    DOWN = "down"
    EJECTED = "ejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Probe:
    """What one probe of one node measured; None where it could not tell."""

    ok: bool
    error: str | None = None
    rtt: float | None = None
    in_recovery: bool | None = None
    system_identifier: int | None = None
    current_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    last_replay_age: float | None = None
    streaming: bool | None = None
    replay_paused: bool = False
    replay_lags: Mapping[str, float] = field(default_factory=dict)
    #: A standby's queries cancelled so far on recovery conflicts, in its database.
    recovery_conflicts: int | None = None


class Freshness(NamedTuple):
    """How stale a replica may be: what a staleness budget (``max_lag``) is held to."""

    #: The lag the last probe measured.
    lag_seconds: float
    #: ``time.monotonic()`` when the cycle that measured it started. Lag grows
    #: at most one second per second, so at ``now`` it is at most
    #: ``lag_seconds + (now - measured_at)``.
    measured_at: float
    #: False for a replica out of rotation for lag alone (not down, not ejected).
    in_rotation: bool


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One row of the health table: a node's state and the figures behind it."""

    alias: str
    role: str
    host: str
    port: str
    weight: int | None
    state: State
    in_rotation: bool
    reason: str
    since: datetime
    checked_at: datetime | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    recovery_conflicts: int | None = None
    recovery_conflicts_per_second: float | None = None
    rtt: float | None = None
    lsn: int | None = None
    last_error: str | None = None
    #: Where the replica was listed: "settings", or the discovery source ("dns", "callable").
    source: str = "settings"

    @property
    def lsn_text(self) -> str | None:
        """The WAL position as PostgreSQL prints it, e.g. ``0/3000148``."""
        return None if self.lsn is None else format_lsn(self.lsn)

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        """The JSON form (see docs/replica-health.md); ``topology`` adds hosts and errors."""
        data: dict[str, Any] = {
            "alias": self.alias,
            "role": self.role,
            "state": str(self.state),
            "in_rotation": self.in_rotation,
            "lag_seconds": _round(self.lag_seconds, 3),
            "lag_bytes": self.lag_bytes,
            "recovery_conflicts": self.recovery_conflicts,
            "recovery_conflicts_per_second": _round(self.recovery_conflicts_per_second, 3),
            "source": self.source,
        }
        if topology:
            data.update(
                {
                    "host": self.host,
                    "port": self.port,
                    "weight": self.weight,
                    "reason": self.reason,
                    "since": self.since.isoformat(),
                    "checked_at": self.checked_at.isoformat() if self.checked_at else None,
                    "rtt_ms": _round(None if self.rtt is None else self.rtt * 1000, 2),
                    "lsn": self.lsn_text,
                    "last_error": self.last_error,
                }
            )
        return data


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class Sharing:
    """Who probes for this process under ``HEALTH_SHARING`` ``"host"`` or ``"cache"``."""

    mode: str
    #: This process holds the lease (or probes for itself: see ``fallback``).
    probing_here: bool
    #: The store cannot be reached, so this process probes for itself.
    fallback: bool
    prober_host: str | None
    prober_pid: int | None
    #: Wall-clock times: when the prober took the lease, and published last.
    lease_since: float | None
    published_at: float | None

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        now = time.time()
        data: dict[str, Any] = {
            "mode": self.mode,
            "probing_here": self.probing_here,
            "fallback": self.fallback,
            "lease_age_seconds": _age(self.lease_since, now),
            "snapshot_age_seconds": _age(self.published_at, now),
        }
        if topology:
            data["prober"] = (
                None
                if self.prober_pid is None
                else {"host": self.prober_host, "pid": self.prober_pid}
            )
        return data


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else round(max(0.0, now - since), 3)


@dataclass(frozen=True, slots=True)
class Discovered:
    """Where the replica list comes from under ``DISCOVERY``, and its history."""

    source: str
    #: How many replicas the list holds now (those of REPLICAS aside).
    replicas: int
    #: Wall-clock times: when the list last changed, and the source last answered.
    changed_at: float | None
    answered_at: float | None
    #: Why the last ask failed (the last list is kept); None when it answered.
    error: str | None

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        now = time.time()
        data: dict[str, Any] = {
            "source": self.source,
            "replicas": self.replicas,
            "changed_at": _iso(self.changed_at),
            "answer_age_seconds": _age(self.answered_at, now),
            "failing": self.error is not None,
        }
        if topology:
            data["error"] = self.error
        return data


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


#: Overall status -> exit status of ``replica_health --check`` (and HTTP 200/503).
OVERALL_CODES: Mapping[str, int] = {"ok": 0, "degraded": 1, "unavailable": 2}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every node's status at the end of one probe cycle. Immutable."""

    nodes: tuple[NodeStatus, ...]
    taken_at: datetime
    #: Who probes, when processes share the work; None with HEALTH_SHARING "process".
    sharing: Sharing | None = None
    #: Where replicas are discovered; None without DISCOVERY.
    discovery: Discovered | None = None

    @property
    def primary(self) -> NodeStatus:
        return self.nodes[0]

    @property
    def replicas(self) -> tuple[NodeStatus, ...]:
        return self.nodes[1:]

    def node(self, alias: str) -> NodeStatus:
        for node in self.nodes:
            if node.alias == alias:
                return node
        raise KeyError(alias)

    @property
    def overall(self) -> str:
        """``ok``: every replica serves; ``degraded``: some do not; ``unavailable``:
        none does, or the primary is unreachable (down, or ejected: not a primary)."""
        serving = [n for n in self.replicas if n.in_rotation]
        primary_lost = self.primary.state in (State.DOWN, State.EJECTED)
        if primary_lost or (self.replicas and not serving):
            return "unavailable"
        if len(serving) < len(self.replicas):
            return "degraded"
        return "ok"

    @property
    def exit_code(self) -> int:
        return OVERALL_CODES[self.overall]

    def least_lagged(self) -> str | None:
        """The reachable, still-a-replica alias with the least lag, for FALLBACK."""
        candidates = [
            n for n in self.replicas if n.state in (State.HEALTHY, State.LAGGING) and n.weight != 0
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda n: (
                n.lag_bytes if n.lag_bytes is not None else math.inf,
                n.lag_seconds if n.lag_seconds is not None else math.inf,
            ),
        )
        return best.alias

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.overall,
            "taken_at": self.taken_at.isoformat(),
            "nodes": [node.as_dict(topology=topology) for node in self.nodes],
        }
        if self.sharing is not None:
            data["sharing"] = self.sharing.as_dict(topology=topology)
        if self.discovery is not None:
            data["discovery"] = self.discovery.as_dict(topology=topology)
        return data
