"""How the monitor judges a replica from its probes, without a server.

The cluster tests (tests/integration/test_health.py) show each rule against
real standbys; these pin down the arithmetic and the state machine.
"""

from __future__ import annotations

import pytest

from replica_router.conf import parse_settings
from replica_router.health.model import Probe, State
from replica_router.health.policy import (
    CONFLICT_RATE_WINDOW,
    MAX_BACKOFF_INTERVALS,
    Conflicts,
    Lag,
    Tracker,
    Verdict,
    lag_seconds,
    primary_verdict,
    probe_gap,
    recovery_conflict_rate,
    replica_verdict,
    usable_primary,
)

CONFIG, _ = parse_settings(
    {
        "REPLICAS": ["replica_1"],
        "MAX_LAG_SECONDS": 5.0,
        "MAX_LAG_BYTES": 1000,
        "CHECK_INTERVAL": 1.0,
        "CHECK_TIMEOUT": 0.5,
        "RECOVERY_CHECKS": 2,
    }
)
PRIMARY = Probe(ok=True, in_recovery=False, system_identifier=7, current_lsn=5000)


def standby(**figures) -> Probe:
    defaults = {
        "ok": True,
        "in_recovery": True,
        "system_identifier": 7,
        "receive_lsn": 5000,
        "replay_lsn": 5000,
        "streaming": True,
    }
    return Probe(**{**defaults, **figures})


def test_the_probe_gap_is_the_interval_plus_the_timeout():
    assert probe_gap(CONFIG) == 1.5


def test_a_primary_in_recovery_or_down_is_not_used_for_lag():
    assert usable_primary(PRIMARY) is PRIMARY
    assert usable_primary(Probe(ok=False, error="refused")) is None
    assert usable_primary(standby()) is None
    assert usable_primary(None) is None


class TestLagSeconds:
    def test_a_caught_up_replica_of_an_idle_primary_has_none(self):
        # Its last replayed transaction may be hours old; that is not lag.
        assert lag_seconds(standby(last_replay_age=3600.0), PRIMARY, "replica_1") == 0.0

    def test_with_the_primary_gone_replaying_all_received_is_caught_up(self):
        probe = standby(streaming=False, last_replay_age=60.0)
        assert lag_seconds(probe, None, "replica_1") == 0.0

    def test_wal_in_flight_is_the_primarys_replay_lag(self):
        primary = Probe(
            ok=True, in_recovery=False, current_lsn=6000, replay_lags={"replica_1": 0.25}
        )
        assert lag_seconds(standby(), primary, "replica_1") == 0.25
        assert lag_seconds(standby(), primary, "replica_2") == 0.0

    def test_a_replica_behind_what_it_received_is_as_late_as_its_last_transaction(self):
        probe = standby(replay_lsn=4000, last_replay_age=2.5)
        assert lag_seconds(probe, PRIMARY, "replica_1") == 2.5

    def test_a_replica_that_stopped_streaming_is_not_taken_as_caught_up(self):
        probe = standby(streaming=False, last_replay_age=9.0)
        assert lag_seconds(probe, PRIMARY, "replica_1") == 9.0

    def test_with_nothing_replayed_yet_the_primary_says(self):
        primary = Probe(
            ok=True, in_recovery=False, current_lsn=6000, replay_lags={"replica_1": 4.0}
        )
        probe = standby(replay_lsn=None)
        assert lag_seconds(probe, primary, "replica_1") == 4.0
        assert lag_seconds(probe, None, "replica_1") is None


class TestVerdicts:
    def test_primary(self):
        assert primary_verdict(PRIMARY) == Verdict(State.HEALTHY, "reachable")
        assert primary_verdict(Probe(ok=False, error="refused")).state is State.DOWN
        assert primary_verdict(standby()).state is State.EJECTED

    @pytest.mark.parametrize(
        ("probe", "lag", "state", "reason"),
        [
            (Probe(ok=False, error="refused"), Lag(None, None), State.DOWN, "refused"),
            (standby(in_recovery=False), Lag(0, 0.0), State.EJECTED, "promoted"),
            (standby(system_identifier=8), Lag(0, 0.0), State.EJECTED, "another cluster"),
            (standby(), Lag(1001, 0.0), State.LAGGING, "1001 bytes behind"),
            (standby(replay_paused=True), Lag(2000, 0.0), State.LAGGING, "replay is paused"),
            # 3.6 s of lag could be 5.1 s by the next verdict, 1.5 s away.
            (standby(), Lag(0, 3.6), State.LAGGING, "3.6s behind"),
            (standby(), Lag(1000, 3.4), State.HEALTHY, "in rotation"),
            (standby(system_identifier=None), Lag(None, None), State.HEALTHY, "in rotation"),
        ],
    )
    def test_replica(self, probe, lag, state, reason):
        verdict = replica_verdict(probe, PRIMARY, lag, CONFIG)
        assert verdict.state is state
        assert reason in verdict.reason

    def test_another_cluster_needs_the_primarys_identifier(self):
        verdict = replica_verdict(standby(system_identifier=8), None, Lag(None, 0.0), CONFIG)
        assert verdict.state is State.HEALTHY


class TestTracker:
    def judge(self, tracker, state, now=0.0):
        return tracker.judge(
            Verdict(state, str(state)), recovery_checks=2, check_interval=1.0, now=now
        )

    def test_the_first_good_probe_puts_a_replica_in_rotation(self):
        tracker = Tracker("replica_1")
        change = self.judge(tracker, State.HEALTHY)
        assert change is not None and (change.old, change.new) == (State.UNKNOWN, State.HEALTHY)
        assert tracker.in_rotation

    def test_a_replica_out_of_rotation_returns_after_recovery_checks_good_probes(self):
        tracker = Tracker("replica_1")
        self.judge(tracker, State.HEALTHY)
        assert self.judge(tracker, State.LAGGING).new is State.LAGGING
        assert not tracker.in_rotation
        assert self.judge(tracker, State.HEALTHY) is None
        assert not tracker.in_rotation and tracker.reason == "recovering: 1/2 good probes"
        # A bad probe in between starts the count again.
        self.judge(tracker, State.LAGGING)
        assert self.judge(tracker, State.HEALTHY) is None
        change = self.judge(tracker, State.HEALTHY)
        assert change is not None and change.new is State.HEALTHY
        assert tracker.in_rotation and tracker.reason == "recovered"

    def test_a_down_replica_is_probed_less_and_less_often(self):
        tracker = Tracker("replica_1")
        waits = []
        for _ in range(6):
            self.judge(tracker, State.DOWN, now=100.0)
            waits.append(tracker.next_probe_at - 100.0)
        assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert MAX_BACKOFF_INTERVALS == 8
        self.judge(tracker, State.HEALTHY, now=200.0)
        assert (tracker.failures, tracker.next_probe_at) == (0, 0.0)

    def test_lagging_closes_the_breaker(self):
        tracker = Tracker("replica_1")
        self.judge(tracker, State.DOWN, now=100.0)
        self.judge(tracker, State.LAGGING, now=101.0)
        assert (tracker.failures, tracker.next_probe_at) == (0, 0.0)

    def test_lag_is_bounded_by_the_last_cycle_that_found_the_replica_caught_up(self):
        tracker = Tracker("replica_1")
        assert tracker.measure_lag(standby(), PRIMARY, cycle_started=10.0, now=10.0) == Lag(0, 0.0)
        # Its last transaction is 30 s old, but it lacked nothing 2 s ago.
        late = standby(replay_lsn=4000, last_replay_age=30.0)
        assert tracker.measure_lag(late, PRIMARY, cycle_started=12.0, now=12.0) == Lag(1000, 2.0)

    def test_a_failed_probe_measures_no_lag(self):
        tracker = Tracker("replica_1")
        assert tracker.measure_lag(Probe(ok=False), PRIMARY, cycle_started=0, now=0) == Lag(
            None, None
        )


class TestRecoveryConflicts:
    """A standby that cancels reads conflicting with WAL replay: the count, and
    a rate an operator can read at a glance, over about CONFLICT_RATE_WINDOW."""

    def count(self, tracker, conflicts, now):
        return tracker.count_conflicts(standby(recovery_conflicts=conflicts), now=now)

    def test_the_rate_is_the_difference_over_the_time_between_the_samples(self):
        assert recovery_conflict_rate([(0.0, 5), (1.0, 6), (4.0, 17)]) == 3.0
        assert recovery_conflict_rate([(2.0, 5), (3.0, 5)]) == 0.0

    def test_one_sample_or_none_gives_no_rate(self):
        assert recovery_conflict_rate([]) is None
        assert recovery_conflict_rate([(0.0, 5)]) is None
        assert recovery_conflict_rate([(1.0, 5), (1.0, 7)]) is None  # no time between

    def test_the_first_probe_counts_and_the_second_gives_a_rate(self):
        tracker = Tracker("replica_1")
        assert self.count(tracker, 40, now=100.0) == Conflicts(40, None)
        assert self.count(tracker, 42, now=101.0) == Conflicts(42, 2.0)

    def test_the_rate_spans_the_last_window_of_probes(self):
        assert CONFLICT_RATE_WINDOW == 10.0
        tracker = Tracker("replica_1")
        # A burst of 30 conflicts at t=2, then quiet; probes every second.
        for t in range(13):
            conflicts = self.count(tracker, 0 if t < 2 else 30, now=float(t))
        # At t=12 the window starts at t=2, the burst's own probe: no longer in it.
        assert conflicts == Conflicts(30, 0.0)
        tracker = Tracker("replica_1")
        for t in range(12):
            conflicts = self.count(tracker, 0 if t < 2 else 30, now=float(t))
        # At t=11 the base is the probe at t=1, before the burst: 30 over 10 s.
        assert conflicts == Conflicts(30, 3.0)
        assert len(tracker.conflict_samples) == 11  # a window's worth, not all history

    def test_probes_further_apart_than_the_window_give_the_rate_between_the_last_two(self):
        tracker = Tracker("replica_1")
        self.count(tracker, 0, now=0.0)
        self.count(tracker, 60, now=30.0)
        assert self.count(tracker, 150, now=60.0) == Conflicts(150, 3.0)

    def test_a_reset_counter_starts_the_rate_again(self):
        tracker = Tracker("replica_1")
        self.count(tracker, 500, now=0.0)
        # pg_stat_reset(), or a replica that crashed: not -490 conflicts.
        assert self.count(tracker, 10, now=1.0) == Conflicts(10, None)
        assert self.count(tracker, 12, now=2.0) == Conflicts(12, 2.0)

    def test_a_failed_probe_counts_nothing_and_the_rate_does_not_span_the_outage(self):
        tracker = Tracker("replica_1")
        self.count(tracker, 5, now=0.0)
        assert tracker.count_conflicts(Probe(ok=False), now=1.0) == Conflicts(None, None)
        assert self.count(tracker, 9, now=50.0) == Conflicts(9, None)

    def test_a_node_that_reports_none_has_none(self):
        tracker = Tracker("replica_1")
        assert tracker.count_conflicts(PRIMARY, now=0.0) == Conflicts(None, None)
