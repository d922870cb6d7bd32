"""Which replica serves the next read: smooth weighted round-robin.

The schedule is nginx's smooth weighted round-robin: on every pick each peer's
``current`` grows by its weight, the peer with the largest ``current`` is picked
and loses the total weight. It is deterministic, spreads each replica's picks
evenly instead of in bursts, and after ``sum(weights)`` picks every ``current``
is back to zero, so the sequence repeats with exactly ``weight`` picks of each
replica in every window of ``sum(weights)`` consecutive picks.

Because the sequence is periodic it is computed once, and picks are served by
``next()`` on an ``itertools.cycle``: a single C call, atomic under the GIL, so
no lock is needed and a pick costs about as much as a dict lookup.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["Balancer", "WeightedSchedule"]

#: The longest period (sum of the weights after dividing by their gcd) accepted.
MAX_PERIOD: Final = 1_000_000


def _validated(weights: object) -> dict[str, int]:
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a mapping of alias to int, got {weights!r}")
    result: dict[str, int] = {}
    for alias, weight in weights.items():
        if not isinstance(alias, str) or not alias:
            raise ValueError(f"weights must be keyed by non-empty str aliases, got {alias!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"the weight of {alias!r} must be an int >= 0, got {weight!r}")
        result[alias] = weight
    return result


def _smooth_sequence(weights: Mapping[str, int]) -> tuple[str, ...]:
    """One period of nginx's smooth weighted round-robin over the positive weights."""
    peers = [(alias, weight) for alias, weight in weights.items() if weight > 0]
    if not peers:
        return ()
    divisor = math.gcd(*(weight for _, weight in peers))
    aliases = [alias for alias, _ in peers]
    reduced = [weight // divisor for _, weight in peers]
    total = sum(reduced)
    if total > MAX_PERIOD:
        raise ValueError(
            f"the weights {dict(weights)!r} make a schedule of {total} picks "
            f"(the limit is {MAX_PERIOD}); use smaller weights in the same proportions"
        )
    current = [0] * len(reduced)
    sequence: list[str] = []
    for _ in range(total):
        best = 0
        for i, weight in enumerate(reduced):
            current[i] += weight
            # Strict '>' keeps ties on the first-listed peer: deterministic.
            if current[i] > current[best]:
                best = i
        current[best] -= total
        sequence.append(aliases[best])
    return tuple(sequence)


class WeightedSchedule:
    """An immutable smooth weighted round-robin over replica aliases.

    ``WeightedSchedule(weights={"replica_1": 3, "replica_2": 1})``; ``pick()``
    returns the next alias, or None when no weight is positive. A weight of 0
    keeps a replica known but drains it: it is never picked.
    """

    __slots__ = ("_weights", "pick", "sequence")

    #: Return the next alias, or None if no replica has a positive weight.
    #: Thread-safe: it is the C-level ``__next__`` of an ``itertools.cycle``.
    pick: Callable[[], str | None]
    #: One period of the schedule, weights divided by their gcd.
    sequence: tuple[str, ...]

    def __init__(self, *, weights: Mapping[str, int]) -> None:
        validated = _validated(weights)
        self._weights = MappingProxyType(validated)
        self.sequence = _smooth_sequence(validated)
        if self.sequence:
            self.pick = itertools.cycle(self.sequence).__next__
        else:
            self.pick = itertools.repeat(None).__next__

    @property
    def weights(self) -> Mapping[str, int]:
        """Alias -> weight as given (read-only), drained replicas included."""
        return self._weights

    @property
    def period(self) -> int:
        """The number of picks after which the schedule repeats (0 if empty)."""
        return len(self.sequence)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={dict(self._weights)!r})"


class Balancer:
    """Holds the current :class:`WeightedSchedule` and swaps it atomically.

    ``pick()`` returns the next replica alias, or None. ``set_weights()`` builds a
    new schedule and replaces the old one by assigning one attribute, so a
    concurrent ``pick()`` sees either the old schedule or the new one, never a
    mix. The health monitor uses it to take replicas out of rotation and back.
    """

    __slots__ = ("_schedule", "pick", "rotation")

    #: Return the next alias from the current schedule, or None if it is empty.
    pick: Callable[[], str | None]
    #: The aliases ``pick()`` can return (a positive weight): a set, so that
    #: asking whether a replica is in rotation costs one lookup.
    rotation: frozenset[str]

    def __init__(self, *, weights: Mapping[str, int]) -> None:
        self._install(WeightedSchedule(weights=weights))

    def _install(self, schedule: WeightedSchedule) -> None:
        # ``pick`` is the schedule's C-level bound method, so a pick runs no
        # Python frame; this single assignment is the atomic swap.
        self._schedule = schedule
        self.rotation = frozenset(schedule.sequence)
        self.pick = schedule.pick

    @property
    def schedule(self) -> WeightedSchedule:
        """The schedule picks are currently served from."""
        return self._schedule

    @property
    def weights(self) -> Mapping[str, int]:
        """The current weights (read-only)."""
        return self._schedule.weights

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Replace the weights; picks continue from the start of the new schedule.

        Raises ValueError, leaving the current schedule in place, if the weights
        are invalid.
        """
        self._install(WeightedSchedule(weights=weights))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={dict(self.weights)!r})"
