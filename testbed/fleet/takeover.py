"""The lease changing hands: SIGKILL the worker that probes, time the next one.

:func:`measure_takeover` does it under light read load, and collects the
probers' published cycles (:mod:`testbed.fleet.store`) until the new one has
published one;
:func:`measure_death_during_takeover` also kills a replica a moment after the
prober, while no process holds the lease, and reports where the reads went.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.fleet.hosts import Fleet, wait_all
from testbed.fleet.load import ReadLoad
from testbed.fleet.store import Cycle, PublishedCycles


def prober(fleets: Sequence[Fleet]) -> tuple[Fleet, dict[str, Any]]:
    """The fleet and ``/state/`` of the one worker that probes (asserts there is one)."""
    found = [
        (fleet, state)
        for fleet in fleets
        for state in fleet.states().values()
        if state["probing_here"]
    ]
    assert len(found) == 1, f"expected one prober, found {[s['pid'] for _, s in found]}"
    return found[0]


@dataclass
class Takeover:
    killed: int
    new_prober: int
    #: From the SIGKILL to the new holder's lease (its own clock: this host's).
    seconds: float
    #: When the new holder's lease began (wall clock).
    new_prober_since: float
    #: From the SIGKILL until a request saw the new prober answer.
    observed_seconds: float
    reads: int
    failures: list[str]
    #: The reads answered, as :attr:`ReadLoad.log`.
    log: list[tuple[float, int, str, str]] = field(default_factory=list)
    #: When ``meanwhile`` returned (wall clock), if given.
    meanwhile_at: float | None = None
    #: The probers' published cycles, from before the kill until the new
    #: prober had published one of its own.
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def new_prober_cycles(self) -> list[Cycle]:
        return [cycle for cycle in self.cycles if cycle.holder == self.new_prober]


def measure_takeover(
    fleets: Sequence[Fleet],
    *,
    interval: float,
    timeout: float = 30.0,
    meanwhile: Callable[[], None] | None = None,
) -> Takeover:
    """SIGKILL the prober under light read load; wait for another worker to probe.

    Done when some other worker says ``probing_here`` with a fresh snapshot
    (``snapshot_age_seconds`` under 1.5 intervals: a cycle, give or take its
    jitter), and has published a cycle of its own. ``meanwhile`` (a fault)
    runs a fifth of an interval after the kill, while no process holds the
    lease.
    """
    fleet, state = prober(fleets)
    victim = state["pid"]
    with PublishedCycles(fleets) as published, ReadLoad(fleets) as load:
        time.sleep(2 * interval)  # reads before the kill too
        with load.lock:  # no read in flight on the victim
            killed_at, killed_mono = time.time(), time.monotonic()
            os.kill(victim, signal.SIGKILL)
        meanwhile_at = None
        if meanwhile is not None:
            time.sleep(interval / 5)
            meanwhile()
            meanwhile_at = time.time()
        deadline = killed_mono + timeout
        found: dict[str, Any] | None = None
        while found is None:
            assert time.monotonic() < deadline, f"no worker took over within {timeout}s"
            for each in fleets:
                s = each.get("/state/")
                age = s["snapshot_age_seconds"]
                if (
                    s["pid"] != victim
                    and s["probing_here"]
                    and age is not None
                    and age < 1.5 * interval
                ):
                    found = s
                    break
        observed = time.monotonic() - killed_mono
        new_prober = found["pid"]
        published.wait_for(
            lambda seen: any(cycle.holder == new_prober for cycle in seen),
            timeout=timeout,
            what=f"a cycle of the new prober {new_prober}",
        )
        time.sleep(2 * interval)  # and after it
    assert found["lease_since"] is not None
    return Takeover(
        killed=victim,
        new_prober=new_prober,
        seconds=found["lease_since"] - killed_at,
        new_prober_since=found["lease_since"],
        observed_seconds=observed,
        reads=load.reads,
        failures=load.failures,
        log=load.log,
        meanwhile_at=meanwhile_at,
        cycles=published.seen,
    )


@dataclass
class DeathDuringTakeover:
    """A replica killed just after the prober: what the fleet did about it."""

    takeover: Takeover
    #: Worker pid -> seconds from the replica's death to its transition (the
    #: workers that were there before; not the one started in the victim's place).
    out_after: dict[int, float]
    #: Every live worker's own transition (wall clock), the new one's included.
    out_at: dict[int, float]
    #: Reads answered after the death: all of them, those the router sent to
    #: the dead replica (served elsewhere), and those it served (none can be).
    reads: int
    sent_there: list[tuple[float, int, str, str]]
    served_there: list[tuple[float, int, str, str]]

    @property
    def last_out(self) -> float:
        return max(self.out_after.values())

    @property
    def took_over(self) -> float:
        """Seconds from the replica's death until the new prober held the lease."""
        assert self.takeover.meanwhile_at is not None
        return self.takeover.new_prober_since - self.takeover.meanwhile_at

    @property
    def sent_after_out(self) -> list[tuple[float, int, str, str]]:
        """Reads sent there by a worker after it had taken it out (a read's
        time is when its view began, before the router chose)."""
        return [
            read
            for read in self.sent_there
            if read[1] in self.out_at and read[0] > self.out_at[read[1]]
        ]


def measure_death_during_takeover(
    fleets: Sequence[Fleet], alias: str, kill: Callable[[str], None], *, interval: float
) -> DeathDuringTakeover:
    """SIGKILL the prober, then ``kill(alias)`` a fifth of an interval later,
    under light read load; wait until every worker has ``alias`` out.

    Right after the death, reads are made until one is sent to ``alias``, so
    that a read meets the dead replica before any new prober could (the light
    load alone may miss it on a slow machine)."""
    before = set().union(*(fleet.pids() for fleet in fleets))
    nudged: list[tuple[float, int, str, str]] = []

    def fault() -> None:
        kill(alias)
        nudged.append((time.time(), 0, "", ""))  # the moment of death, dropped below
        for turn in range(50):
            read = fleets[turn % len(fleets)].get("/read/")
            nudged.append((read["at"], read["pid"], str(read["db"]), str(read["server"])))
            if read["db"] == alias:
                break

    takeover = measure_takeover(fleets, interval=interval, meanwhile=fault)
    takeover.log.extend(nudged[1:])
    takeover.meanwhile_at = died = nudged[0][0]
    states = wait_all(fleets, lambda s: alias not in s["rotation"], timeout=30, what=f"{alias} out")
    out_at = {
        pid: min(times)
        for pid, state in states.items()
        if (times := [at for at, a, _, new in state["changes"] if a == alias and at >= died])
    }
    out_after = {pid: at - died for pid, at in out_at.items() if pid in before}
    after_death = [read for read in takeover.log if read[0] > died]
    return DeathDuringTakeover(
        takeover=takeover,
        out_after=out_after,
        out_at=out_at,
        reads=len(after_death),
        sent_there=[read for read in after_death if read[2] == alias],
        served_there=[read for read in after_death if read[3] == alias],
    )
