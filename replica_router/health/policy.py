"""How the monitor judges a node from its probes: pure functions and a small tracker.

No I/O and no clock of its own (callers pass ``now``), so every rule here is
tested without a server: the lag in seconds, the verdict on one probe, the
hysteresis that keeps a recovering replica out until it has proved itself, the
circuit breaker that probes a down replica less and less often, and the rate of
recovery conflicts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, NamedTuple

from replica_router.health.model import NodeStatus, Probe, State

if TYPE_CHECKING:
    from collections.abc import Sequence

    from replica_router.conf import RouterConfig

__all__ = [
    "CONFLICT_RATE_WINDOW",
    "MAX_BACKOFF_INTERVALS",
    "Change",
    "Conflicts",
    "Lag",
    "Tracker",
    "Verdict",
    "lag_seconds",
    "primary_verdict",
    "probe_gap",
    "recovery_conflict_rate",
    "replica_verdict",
]

#: A down replica is probed again after 1, 2, 4, then at most this many intervals.
MAX_BACKOFF_INTERVALS: Final = 8
#: The rate of recovery conflicts is taken over the probes of about the last
#: this many seconds (over the last two probes when they are further apart).
CONFLICT_RATE_WINDOW: Final = 10.0


class Verdict(NamedTuple):
    """What one probe says of a node."""

    state: State
    reason: str


class Change(NamedTuple):
    """A node's change of state, to log and to signal."""

    alias: str
    old: State
    new: State
    reason: str


class Conflicts(NamedTuple):
    """A replica's recovery conflicts; None where they cannot be told."""

    total: int | None
    per_second: float | None


class Lag(NamedTuple):
    """A replica's lag behind the primary; None where it cannot be told."""

    bytes: int | None
    seconds: float | None


def probe_gap(config: RouterConfig) -> float:
    """The longest wait between two verdicts on a replica: the interval between
    cycles plus the time a probe may take."""
    return config.check_interval + config.check_timeout


def usable_primary(primary: Probe | None) -> Probe | None:
    """The primary's probe if it answered as a primary, else None."""
    if primary is not None and primary.ok and not primary.in_recovery:
        return primary
    return None


def lag_seconds(result: Probe, primary: Probe | None, alias: str) -> float | None:
    """Replication lag in seconds that stays 0 on an idle, caught-up replica.

    ``primary`` is the usable primary's probe of the same cycle, or None.
    """
    caught_up = (
        result.receive_lsn is not None
        and result.replay_lsn is not None
        and result.replay_lsn >= result.receive_lsn
    )
    # With the primary down nothing newer can exist, so replaying all that was
    # received means caught up even though the receiver cannot stream.
    if caught_up and (result.streaming is not False or primary is None):
        if primary is None or primary.current_lsn is None:
            return 0.0
        if result.replay_lsn is not None and result.replay_lsn >= primary.current_lsn:
            return 0.0
        # Replayed all it received, but the primary has more: in flight.
        return primary.replay_lags.get(alias, 0.0)
    if result.last_replay_age is not None:
        return result.last_replay_age
    if primary is not None and alias in primary.replay_lags:
        return primary.replay_lags[alias]
    return None


def recovery_conflict_rate(samples: Sequence[tuple[float, int]]) -> float | None:
    """Conflicts per second from the oldest to the newest ``(monotonic time, count)``
    sample; None with fewer than two samples (a rate needs two probes)."""
    if len(samples) < 2:
        return None
    (first_at, first), (last_at, last) = samples[0], samples[-1]
    if last_at <= first_at:
        return None
    return max(0, last - first) / (last_at - first_at)


def primary_verdict(result: Probe) -> Verdict:
    if not result.ok:
        return Verdict(State.DOWN, result.error or "unreachable")
    if result.in_recovery:
        return Verdict(State.EJECTED, "in recovery: this is a standby, not a primary")
    return Verdict(State.HEALTHY, "reachable")


def _paused_note(result: Probe) -> str:
    return "; WAL replay is paused" if result.replay_paused else ""


def replica_verdict(
    result: Probe, primary: Probe | None, lag: Lag, config: RouterConfig
) -> Verdict:
    """The state one probe puts a replica in, before hysteresis.

    ``primary`` is the usable primary's probe of the same cycle, or None.
    """
    if not result.ok:
        return Verdict(State.DOWN, result.error or "unreachable")
    if not result.in_recovery:
        return Verdict(State.EJECTED, "promoted: pg_is_in_recovery() is false")
    theirs = result.system_identifier
    ours = primary.system_identifier if primary is not None else None
    if ours is not None and theirs is not None and ours != theirs:
        return Verdict(
            State.EJECTED,
            f"another cluster: system identifier {theirs} is not the primary's {ours}",
        )
    if lag.bytes is not None and lag.bytes > config.max_lag_bytes:
        return Verdict(
            State.LAGGING,
            f"{lag.bytes} bytes behind (MAX_LAG_BYTES {config.max_lag_bytes})"
            + _paused_note(result),
        )
    gap = probe_gap(config)
    if lag.seconds is not None and lag.seconds > 0 and lag.seconds + gap > config.max_lag_seconds:
        # Lag grows at most one second per second, and the next verdict is at
        # most one probe gap away: a replica that could pass MAX_LAG_SECONDS
        # by then leaves rotation now, so no read is served with more lag.
        return Verdict(
            State.LAGGING,
            f"{lag.seconds:.1f}s behind (MAX_LAG_SECONDS {config.max_lag_seconds:g}, "
            f"less {gap:g}s until the next probe)" + _paused_note(result),
        )
    return Verdict(State.HEALTHY, "in rotation")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Tracker:
    """A node's state across cycles: hysteresis, the circuit breaker, the last row."""

    alias: str
    state: State = State.UNKNOWN
    in_rotation: bool = False
    reason: str = "not probed yet"
    since: datetime = field(default_factory=utc_now)
    good_streak: int = 0
    failures: int = 0
    #: Monotonic time before which the circuit breaker skips this node.
    next_probe_at: float = 0.0
    last_error: str | None = None
    #: The row of the last probe, figures included.
    status: NodeStatus | None = None
    #: When a cycle that found the replica caught up started (monotonic).
    caught_up_at: float | None = None
    #: The lag of the last probe and when its cycle started (monotonic).
    lag: float | None = None
    lag_measured_at: float = 0.0
    #: (monotonic time, count) of the recovery conflicts of recent probes.
    conflict_samples: deque[tuple[float, int]] = field(default_factory=deque)

    def set_state(self, state: State, reason: str, *, in_rotation: bool = False) -> Change | None:
        """Enter ``state``; returns the change, or None if the state is the same."""
        if not in_rotation:
            self.good_streak = 0
        self.in_rotation = in_rotation
        self.reason = reason
        if self.state is state:
            return None
        change = Change(self.alias, self.state, state, reason)
        self.state = state
        self.since = utc_now()
        return change

    def judge(
        self, verdict: Verdict, *, recovery_checks: int, check_interval: float, now: float
    ) -> Change | None:
        """Apply a replica's verdict: a replica out of rotation needs
        ``recovery_checks`` good probes in a row to return, and a down one opens
        the circuit breaker."""
        if verdict.state is not State.HEALTHY:
            change = self.set_state(verdict.state, verdict.reason)
            if verdict.state is State.DOWN:
                self.open_breaker(now, check_interval)
            else:
                self.close_breaker()
            return change
        self.close_breaker()
        if self.in_rotation or self.state is State.UNKNOWN:
            return self.set_state(State.HEALTHY, verdict.reason, in_rotation=True)
        self.good_streak += 1
        if self.good_streak >= recovery_checks:
            return self.set_state(State.HEALTHY, "recovered", in_rotation=True)
        self.reason = f"recovering: {self.good_streak}/{recovery_checks} good probes"
        return None

    def open_breaker(self, now: float, check_interval: float) -> None:
        """Probe again after 1, 2, 4, ... up to MAX_BACKOFF_INTERVALS intervals."""
        self.failures += 1
        backoff = min(2 ** (self.failures - 1), MAX_BACKOFF_INTERVALS)
        self.next_probe_at = now + backoff * check_interval

    def close_breaker(self) -> None:
        self.failures = 0
        self.next_probe_at = 0.0

    def measure_lag(
        self, result: Probe, primary: Probe | None, *, cycle_started: float, now: float
    ) -> Lag:
        """The replica's lag from this cycle's probes; ``primary`` as in :func:`lag_seconds`."""
        if not result.ok:
            self.lag = None
            return Lag(None, None)
        lag_bytes = None
        if primary is not None and primary.current_lsn is not None:
            lag_bytes = max(0, primary.current_lsn - (result.replay_lsn or 0))
        seconds = lag_seconds(result, primary, self.alias)
        if seconds == 0.0:
            self.caught_up_at = cycle_started
        elif seconds is not None and self.caught_up_at is not None:
            # It was caught up when an earlier cycle started, so it lacks
            # nothing older than that. After a quiet spell this is far
            # tighter than the age of the last transaction it replayed.
            seconds = min(seconds, now - self.caught_up_at)
        self.lag, self.lag_measured_at = seconds, cycle_started
        return Lag(lag_bytes, seconds)

    def count_conflicts(self, result: Probe, *, now: float) -> Conflicts:
        """The replica's recovery conflicts and their rate over
        :data:`CONFLICT_RATE_WINDOW`, with this probe's count taken at ``now``."""
        samples = self.conflict_samples
        if not result.ok or result.recovery_conflicts is None:
            # Unknown now; after a failure the rate starts again from the next
            # good probe rather than spanning the outage.
            samples.clear()
            return Conflicts(None, None)
        count = result.recovery_conflicts
        if samples and count < samples[-1][1]:
            samples.clear()  # the counters were reset (pg_stat_reset(), a crash)
        samples.append((now, count))
        # Keep the newest sample at least a window old as the base, so that the
        # rate spans the whole window once the history is that long.
        while len(samples) > 1 and samples[1][0] <= now - CONFLICT_RATE_WINDOW:
            samples.popleft()
        return Conflicts(count, recovery_conflict_rate(samples))
