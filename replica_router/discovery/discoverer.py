"""When to ask the source again, and what to keep when it cannot answer.

As GitLab's load balancer does, the source is asked every ``REFRESH_SECONDS``
plus up to ``JITTER_SECONDS`` at random (so that a fleet's processes do not
ask at once), and never again sooner than the answer's TTL. A failed or empty
answer keeps the last list: a DNS server that is restarting must not empty
the rotation. Each such spell is logged once, when it begins, and once when
the source answers again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from replica_router.discovery.sources import DiscoveryFailed, Member, Source

__all__ = ["Discoverer", "Found"]

logger = logging.getLogger("replica_router")


@dataclass(frozen=True, slots=True)
class Found:
    """What the discoverer knows: the list in force, and its history."""

    members: tuple[Member, ...]
    #: Wall-clock time of the last change of the list (None: never listed any).
    changed_at: float | None
    #: Wall-clock time of the last answer the source gave.
    answered_at: float | None
    #: Why the last ask failed, while the last list is kept; None when it answered.
    error: str | None


class Discoverer:
    """Asks a :class:`~replica_router.discovery.sources.Source` when due.

    ``monotonic`` schedules the asks, ``clock`` dates the list for display
    and for the other processes of a fleet, and ``rng`` draws the jitter;
    tests pass their own.
    """

    def __init__(
        self,
        source: Source,
        *,
        refresh: float,
        jitter: float,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self._refresh = refresh
        self._jitter = jitter
        self._monotonic = monotonic
        self._clock = clock
        self._rng = rng or random.Random()
        self._next_at = 0.0
        self.found = Found(members=(), changed_at=None, answered_at=None, error=None)

    def due(self) -> bool:
        return self._monotonic() >= self._next_at

    def refresh(self) -> bool:
        """Ask the source if it is due; True if the list changed."""
        if not self.due():
            return False
        now = self._monotonic()
        try:
            answer = self.source.resolve()
            if not answer.members:
                raise DiscoveryFailed("the answer lists no replica")
        except DiscoveryFailed as exc:
            self._next_at = now + self._wait(None)
            if self.found.error is None:
                logger.warning(
                    "replica_router: replica discovery failed (%s); keeping the last list "
                    "of %d replicas until it answers",
                    exc,
                    len(self.found.members),
                )
            self.found = Found(
                self.found.members, self.found.changed_at, self.found.answered_at, str(exc)
            )
            return False
        self._next_at = now + self._wait(answer.ttl)
        wall = self._clock()
        if self.found.error is not None:
            logger.warning("replica_router: replica discovery answers again")
        members = tuple(sorted(answer.members))
        changed = members != self.found.members
        self.found = Found(members, wall if changed else self.found.changed_at, wall, error=None)
        return changed

    def _wait(self, ttl: float | None) -> float:
        wait = self._refresh + self._rng.uniform(0, self._jitter)
        return max(wait, ttl or 0.0)
