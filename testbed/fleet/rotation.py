"""After a fault, the time until every worker has the replica out of rotation,
and the prober's cycles until it published it out.

The times are each worker's own record of its transition, on this host's
clock, so the polling does not add to them. The cycles are the prober's
published snapshots (:mod:`testbed.fleet.store`): counted, not timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.fleet.hosts import Fleet, all_states, wait_all
from testbed.fleet.store import Cycle, PublishedCycles

#: The states in which a replica is out of rotation.
OUT = {"down", "lagging", "ejected"}


@dataclass
class OutOfRotation:
    """How long after a fault each worker took a replica out of rotation, and
    in which of the prober's cycles."""

    alias: str
    #: Worker pid -> seconds from the fault to its own transition.
    seconds: dict[int, float]
    #: When the fault was done (wall clock): the fault had happened by then.
    faulted_at: float = 0.0
    #: The prober's published cycles, from before the fault until every worker
    #: had the replica out.
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def last(self) -> float:
        return max(self.seconds.values())

    @property
    def median(self) -> float:
        return statistics.median(self.seconds.values())

    @property
    def after_fault(self) -> list[Cycle]:
        """The cycles whose snapshot was taken after the fault."""
        return [cycle for cycle in self.cycles if cycle.taken_at > self.faulted_at]

    @property
    def cycles_still_in(self) -> int:
        """The most cycles any one prober ended after the fault with the replica
        still in rotation. Only a cycle already under way at the fault can have
        probed it before it: 0 or 1 means the prober had it out by its second
        probe cycle after the fault at the latest."""
        still_in: dict[int, int] = {}
        for cycle in self.after_fault:
            if cycle.in_rotation.get(self.alias, False):
                still_in[cycle.holder] = still_in.get(cycle.holder, 0) + 1
        return max(still_in.values(), default=0)

    @property
    def published_out(self) -> bool:
        """Whether a prober published a cycle with the replica out.

        Any such cycle came after the fault began, since the replica was in
        rotation before; it may have been taken while the fault was still
        being done (a kill waits for the process to end), before
        ``faulted_at``.
        """
        return any(not cycle.in_rotation.get(self.alias, True) for cycle in self.cycles)


def measure_out_of_rotation(
    fleets: Sequence[Fleet], alias: str, fault: Callable[[], None], *, timeout: float = 60.0
) -> OutOfRotation:
    """Cause ``fault`` and wait until every worker has ``alias`` out of rotation.

    Each worker records (``/state/`` ``changes``) when it moved ``alias`` to a
    state out of rotation; the figure is that time minus the fault's, both on
    this host's wall clock, so the polling does not add to it. Meanwhile the
    prober's published cycles are collected.
    """
    states = all_states(fleets)
    assert all(alias in s["rotation"] for s in states.values()), "not in rotation before"
    with PublishedCycles(fleets) as published:
        started = time.time()

        def out(state: dict[str, Any]) -> bool:
            # The monitor swaps the rotation a moment before it signals the
            # change, so a worker can be caught in between: wait for both.
            recorded = any(
                a == alias and new in OUT and at >= started for at, a, _, new in state["changes"]
            )
            return alias not in state["rotation"] and recorded

        fault()
        faulted_at = time.time()
        states = wait_all(fleets, out, timeout=timeout, what=f"{alias} out")
    seconds = {}
    for pid, state in states.items():
        times = [at for at, a, _, new in state["changes"] if a == alias and new in OUT]
        times = [at for at in times if at >= started]
        assert times, f"worker {pid} has {alias} out of rotation but recorded no transition"
        seconds[pid] = min(times) - started
    return OutOfRotation(alias, seconds, faulted_at=faulted_at, cycles=published.seen)
