"""The last line of ``manage.py replica_health``: what serves reads."""

from __future__ import annotations

from datetime import UTC, datetime

from replica_router.health import NodeStatus, Snapshot, State
from replica_router.management.commands.replica_health import Command


def node(alias: str, role: str, weight: int | None) -> NodeStatus:
    return NodeStatus(
        alias=alias,
        role=role,
        host="db",
        port="5432",
        weight=weight,
        state=State.HEALTHY,
        in_rotation=True,
        reason="in rotation" if role == "replica" else "reachable",
        since=datetime.now(UTC),
    )


def summary(*weights: int) -> str:
    nodes = (
        node("default", "primary", None),
        *(node(f"replica_{i}", "replica", w) for i, w in enumerate(weights, 1)),
    )
    return Command(no_color=True)._summary(Snapshot(nodes=nodes, taken_at=datetime.now(UTC)))


def test_replicas_at_weight_0_are_said_to_get_no_reads():
    # Rolling out: probed, healthy and in rotation, but never picked.
    assert summary(0, 0) == (
        "ok: 2 of 2 replicas serve reads, 2 of them at weight 0 (given no reads) (exit status 0)"
    )
    assert summary(3, 0) == (
        "ok: 2 of 2 replicas serve reads, 1 of them at weight 0 (given no reads) (exit status 0)"
    )
    assert summary(3, 1) == "ok: 2 of 2 replicas serve reads (exit status 0)"
