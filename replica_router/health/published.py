"""The one health value a monitor publishes, and a node's row before any probe.

A :class:`Published` is made from a monitor's own probes
(:meth:`Published.measured`) or, in a fleet, from the document another
process published (:mod:`~replica_router.health.fleet`); the monitor's one
``_publish`` applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from replica_router.conf import RouterConfig
from replica_router.health.aliases import address
from replica_router.health.model import (
    Discovered,
    Freshness,
    NodeStatus,
    Sharing,
    Snapshot,
    State,
)
from replica_router.health.policy import Tracker, utc_now

__all__ = ["Published", "row"]


@dataclass(frozen=True, slots=True)
class Published:
    """The health value a monitor publishes: the snapshot, and what the router
    reads beside it. :meth:`Monitor._publish` applies it, all at once."""

    snapshot: Snapshot
    #: Replica alias -> how stale it may be (see :attr:`Monitor.freshness`).
    freshness: Mapping[str, Freshness] = field(default_factory=dict)
    #: Replay positions learnt with it (read-your-writes); positions only grow.
    replay_positions: Mapping[str, int] = field(default_factory=dict)
    #: The aliases found down (see :attr:`Monitor.down`).
    down: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        down = frozenset(n.alias for n in self.snapshot.nodes if n.state is State.DOWN)
        object.__setattr__(self, "down", down)

    @classmethod
    def measured(
        cls,
        trackers: Iterable[Tracker],
        config: RouterConfig,
        *,
        sharing: Sharing | None = None,
        source_of: Callable[[str], str] = lambda alias: "settings",
        discovery: Discovered | None = None,
    ) -> Published:
        """What the trackers of a monitor that probes say now; ``source_of``
        says where each replica was listed."""
        rows = []
        freshness = {}
        for tracker in trackers:
            rows.append(
                replace(
                    tracker.status or row(tracker, config),
                    state=tracker.state,
                    in_rotation=tracker.in_rotation,
                    reason=tracker.reason,
                    since=tracker.since,
                    last_error=tracker.last_error,
                    source=source_of(tracker.alias),
                )
            )
            if (
                tracker.alias in config.replicas
                and tracker.lag is not None
                and (tracker.in_rotation or tracker.state is State.LAGGING)
            ):
                freshness[tracker.alias] = Freshness(
                    tracker.lag, tracker.lag_measured_at, tracker.in_rotation
                )
        snapshot = Snapshot(
            nodes=tuple(rows), taken_at=utc_now(), sharing=sharing, discovery=discovery
        )
        return cls(snapshot=snapshot, freshness=freshness)

    def rotation(self, weights: Mapping[str, int]) -> dict[str, int] | None:
        """The ``weights`` of the replicas in rotation; None while no node has
        been judged (the balancer keeps the configured weights)."""
        nodes = self.snapshot.nodes
        if all(node.state is State.UNKNOWN for node in nodes):
            return None
        serving = {node.alias for node in nodes if node.in_rotation}
        return {alias: weight for alias, weight in weights.items() if alias in serving}


def row(tracker: Tracker, config: RouterConfig) -> NodeStatus:
    """The node's row with its current state and no probe figures."""
    is_primary = tracker.alias == config.primary
    host, port = address(tracker.alias)
    return NodeStatus(
        alias=tracker.alias,
        role="primary" if is_primary else "replica",
        host=host,
        port=port,
        weight=None if is_primary else config.replicas[tracker.alias],
        state=tracker.state,
        in_rotation=tracker.in_rotation,
        reason=tracker.reason,
        since=tracker.since,
        last_error=tracker.last_error,
    )
