"""After a fault, the time until every worker has the replica out of rotation.

Each worker's own record of its transition, on this host's clock, so the
polling does not add to the figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.fleet.hosts import Fleet, all_states, wait_all

#: The states in which a replica is out of rotation.
OUT = {"down", "lagging", "ejected"}


@dataclass
class OutOfRotation:
    """How long after a fault each worker took a replica out of rotation."""

    #: Worker pid -> seconds from the fault to its own transition.
    seconds: dict[int, float]

    @property
    def last(self) -> float:
        return max(self.seconds.values())

    @property
    def median(self) -> float:
        return statistics.median(self.seconds.values())


def measure_out_of_rotation(
    fleets: Sequence[Fleet], alias: str, fault: Callable[[], None], *, timeout: float = 60.0
) -> OutOfRotation:
    """Cause ``fault`` and wait until every worker has ``alias`` out of rotation.

    Each worker records (``/state/`` ``changes``) when it moved ``alias`` to a
    state out of rotation; the figure is that time minus the fault's, both on
    this host's wall clock, so the polling does not add to it.
    """
    states = all_states(fleets)
    assert all(alias in s["rotation"] for s in states.values()), "not in rotation before"
    started = time.time()

    def out(state: dict[str, Any]) -> bool:
        # The monitor swaps the rotation a moment before it signals the
        # change, so a worker can be caught in between: wait for both.
        recorded = any(
            a == alias and new in OUT and at >= started for at, a, _, new in state["changes"]
        )
        return alias not in state["rotation"] and recorded

    fault()
    states = wait_all(fleets, out, timeout=timeout, what=f"{alias} out")
    seconds = {}
    for pid, state in states.items():
        times = [at for at, a, _, new in state["changes"] if a == alias and new in OUT]
        times = [at for at in times if at >= started]
        assert times, f"worker {pid} has {alias} out of rotation but recorded no transition"
        seconds[pid] = min(times) - started
    return OutOfRotation(seconds)
