"""The health monitor: a thread that probes every node and publishes a snapshot.

Each ``CHECK_INTERVAL`` it probes the primary and every replica in parallel
(:mod:`~replica_router.health.probe`), judges each replica
(:mod:`~replica_router.health.policy`), and publishes an immutable
:class:`~replica_router.health.model.Snapshot`. When the set of replicas fit to
serve reads changes, it swaps the router's weighted schedule in one assignment.
The router never waits for a probe: it only reads what the monitor last published.

Lag is measured two ways, and a replica over either threshold is ``lagging``:

* bytes: the primary's current WAL position minus the replica's replay
  position, both from the same cycle;
* seconds: 0 when the replica has replayed everything it received and is
  streaming (so an idle primary never makes its replicas look late), otherwise
  the age of the last transaction it replayed, or the primary's
  ``pg_stat_replication.replay_lag`` when it has replayed none yet.

Each replica's recovery conflicts (queries it cancelled because they conflicted
with WAL replay) are counted and turned into a rate, but never take it out of
rotation: docs/health.md says why.

What a monitor publishes is one value, :class:`Published`, made from its own
probes or (in a fleet, :mod:`~replica_router.health.fleet`) from the document
another process published; :meth:`Monitor._publish` is the one place where it
becomes what the router reads, the balancer's weights included.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, final

from replica_router.balancer import Balancer
from replica_router.conf import RouterConfig
from replica_router.discovery import Discovery
from replica_router.health.aliases import django_probe_params, is_postgresql, scrub
from replica_router.health.model import Freshness, NodeStatus, Probe, Sharing, Snapshot, State
from replica_router.health.policy import (
    Change,
    Tracker,
    Verdict,
    primary_verdict,
    replica_verdict,
    usable_primary,
    utc_now,
)
from replica_router.health.probe import ParallelProber, ProcessExiting, first_line
from replica_router.health.published import Published, row
from replica_router.signals import replica_state_changed

__all__ = ["Monitor", "Published", "jittered", "live_monitors"]

logger = logging.getLogger("replica_router")

#: Each wait is up to this much shorter at random, so that processes started
#: at once (a fleet of workers) do not probe in lockstep. Never longer: the
#: detection bound, CHECK_INTERVAL + CHECK_TIMEOUT, and the lag promise that
#: rests on it (``policy.probe_gap``) hold as documented.
JITTER: Final = 0.1


def jittered(seconds: float) -> float:
    """``seconds``, or up to :data:`JITTER` of it less, at random."""
    return seconds * random.uniform(1 - JITTER, 1)


#: Every monitor of the process, for the at-fork hook (:mod:`replica_router.runtime`).
_monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()


def live_monitors() -> list[Monitor]:
    """Every monitor of this process that is still referenced: the routing's,
    and any other (the management command's, a test's)."""
    return list(_monitors)


class Monitor:
    """Probes the primary and replicas and keeps the router's rotation right.

    ``Monitor(config=..., balancer=...)``; :meth:`start` runs it in a daemon
    thread, :meth:`run_cycle` runs one cycle in the caller's thread (the
    management command does that). ``params_for(alias)`` gives the psycopg
    connection keywords of an alias; it defaults to Django's settings.
    ``monotonic`` is the clock of probe schedules and lag measurements
    (``time.monotonic`` unless a test passes its own).
    """

    def __init__(
        self,
        *,
        config: RouterConfig,
        balancer: Balancer | None = None,
        params_for: Callable[[str], Mapping[str, Any]] = django_probe_params,
        monotonic: Callable[[], float] = time.monotonic,
        discovery: Discovery | None = None,
    ) -> None:
        if config.check_interval <= 0 or config.check_timeout <= 0:
            raise ValueError("check_interval and check_timeout must be positive")
        self.config = config
        self.balancer = balancer
        self._params_for = params_for
        self._monotonic = monotonic
        #: Where replicas come and go while the site runs (DISCOVERY); None: REPLICAS only.
        self.discovery = discovery
        #: Told the replicas' weights when discovery changes them (the routing listens).
        self.on_replicas: Callable[[Mapping[str, int]], None] | None = None
        self._lock = threading.Lock()
        self._trackers = {alias: Tracker(alias) for alias in [config.primary, *config.replicas]}
        self._prober = ParallelProber(workers=len(self._trackers))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set to end the wait between turns early: by stop(), or by discovery
        #: when its answer changed the list (a new replica is probed at once).
        self._wake = threading.Event()
        if discovery is not None:
            # Through self: after a fork, _wake is another event.
            discovery.on_change = lambda: self._wake.set()
        self._first_cycle = threading.Event()
        self.cycles = 0
        #: Replica alias -> the latest replay position known (read-your-writes).
        self.replay_positions: dict[str, int] = {}
        #: The aliases found down, for a connection about to be made (cheaper
        #: to ask than the snapshot).
        self.down: frozenset[str] = frozenset()
        #: Replica alias -> how stale it may be, for the replicas that may serve
        #: a staleness budget: in rotation, or out of it for lag alone.
        self.freshness: Mapping[str, Freshness] = {}
        #: The nodes' states, as last published.
        self.snapshot: Snapshot
        # Not _measured(): a subclass's _sharing() may need what its __init__ sets next.
        self._publish(
            Published.measured(self._trackers.values(), config, source_of=self._source_of)
        )
        _monitors.add(self)

    # -- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, wait: bool = True) -> None:
        """Start the monitor thread; with ``wait``, return after its first cycle
        (or after ``CHECK_TIMEOUT`` plus a little, whichever comes first).

        Started by another thread already, it still waits for that first cycle,
        so that no caller ever routes by an all-"unknown" snapshot.
        """
        with self._lock:
            if not self.running:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="replica-router-monitor", daemon=True
                )
                self._thread.start()
        if wait:
            self._first_cycle.wait(self.config.check_timeout + 0.25)

    def stop(self) -> None:
        """Stop the thread (it finishes the cycle it is in)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.config.check_timeout + 1)
        self._prober.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread did not come along, and its
        probe connections are the parent's. The next :meth:`start` starts a
        thread of this process's own, and waits for its first cycle.

        Called by the process's at-fork hook (:mod:`replica_router.runtime`)
        while no other thread runs: the locks and events, which the parent's
        threads may have held or waited on at the fork, are replaced.
        """
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._first_cycle = threading.Event()
        self._prober.after_fork()
        if self.discovery is not None:
            self.discovery.after_fork()

    def _loop(self) -> None:
        # The thread's own pacing is in real time, whatever clock the cycles read.
        while not self._stop.is_set():
            started = time.monotonic()
            wait = self.config.check_interval
            try:
                wait = self._turn()
            except ProcessExiting:
                self._stop.set()
                return
            except Exception:  # a bug here must not kill monitoring for good
                logger.exception("replica health cycle failed")
            finally:
                self._first_cycle.set()
            self._wake.wait(max(0.0, jittered(wait) - (time.monotonic() - started)))
            self._wake.clear()

    def _turn(self) -> float:
        """Do this turn's work; return how long after its start the next one comes."""
        self.follow_discovery()
        self.run_cycle()
        return self.config.check_interval

    # -- discovery -------------------------------------------------------------

    def follow_discovery(self, listing: Mapping[str, Any] | None = None) -> bool:
        """Follow discovery: ask the source, or take the fleet prober's
        ``listing``; then retire what has drained. True if the replicas
        changed; a no-op without DISCOVERY."""
        discovery = self.discovery
        if discovery is None:
            return False
        changed = False
        try:
            changed = discovery.discover() if listing is None else discovery.adopt(listing)
            if changed:
                self._follow_replicas(publish=listing is None)
            discovery.retire()
        except Exception:  # discovery must never stop the probing
            logger.exception("replica_router: following replica discovery failed")
        return changed

    def _follow_replicas(self, *, publish: bool) -> None:
        """Probe the replicas the list has now, and forget those it dropped."""
        assert self.discovery is not None
        weights = self.discovery.topology.weights()
        with self._lock:
            self.config = replace(self.config, replicas=MappingProxyType(weights))
            for alias in weights:
                self._trackers.setdefault(alias, Tracker(alias))
            for alias in [a for a in self._trackers if a != self.config.primary]:
                if alias not in weights:
                    del self._trackers[alias]
                    self.replay_positions.pop(alias, None)
                    self._prober.forget(alias)
            self._prober.resize(len(self._trackers))
            if publish:
                self._publish(self._measured())
        if self.on_replicas is not None:
            self.on_replicas(weights)

    def _source_of(self, alias: str) -> str:
        return "settings" if self.discovery is None else self.discovery.topology.source_of(alias)

    # -- one cycle -------------------------------------------------------------

    def run_cycle(self) -> Snapshot:
        """Probe every node that is due, update states, publish and return a snapshot."""
        now = self._monotonic()
        due = [
            alias
            for alias, tracker in self._trackers.items()
            if tracker.next_probe_at <= now and self._probeable(alias)
        ]
        probes = self._prober.probe(due, self._params_for, timeout=self.config.check_timeout)
        primary_probe = probes.get(self.config.primary)
        changes: list[Change | None] = []
        with self._lock:
            if primary_probe is not None:
                changes.append(self._update_primary(primary_probe))
            primary = usable_primary(primary_probe)
            for alias in self.config.replicas:
                if alias in probes:
                    changes.append(self._update_replica(alias, probes[alias], primary, now))
                elif not self._probeable(alias):
                    changes.append(
                        self._trackers[alias].set_state(
                            State.HEALTHY, "not probed: not a PostgreSQL alias", in_rotation=True
                        )
                    )
            self.cycles += 1
            snapshot = self._publish(self._measured())
        self._announce(changes)
        return snapshot

    def _probeable(self, alias: str) -> bool:
        if self._params_for is not django_probe_params:
            return True
        return is_postgresql(alias)

    def _update_primary(self, result: Probe) -> Change | None:
        tracker = self._trackers[self.config.primary]
        verdict = self._scrubbed(primary_verdict(result), tracker.alias)
        change = tracker.set_state(
            verdict.state, verdict.reason, in_rotation=verdict.state is State.HEALTHY
        )
        if not result.ok:
            tracker.last_error = scrub(result.error, tracker.alias)
        tracker.status = self._status(tracker, result, lag_seconds=None, lag_bytes=None)
        return change

    def _update_replica(
        self, alias: str, result: Probe, primary: Probe | None, cycle_started: float
    ) -> Change | None:
        tracker = self._trackers[alias]
        if result.ok and result.replay_lsn is not None:
            self.note_replay_position(alias, result.replay_lsn)
        lag = tracker.measure_lag(
            result, primary, cycle_started=cycle_started, now=self._monotonic()
        )
        verdict = self._scrubbed(replica_verdict(result, primary, lag, self.config), alias)
        change = tracker.judge(
            verdict,
            recovery_checks=self.config.recovery_checks,
            check_interval=self.config.check_interval,
            now=self._monotonic(),
        )
        if verdict.state is State.DOWN:
            tracker.last_error = scrub(result.error, alias)
        conflicts = tracker.count_conflicts(result, now=cycle_started)
        tracker.status = replace(
            self._status(tracker, result, lag_seconds=lag.seconds, lag_bytes=lag.bytes),
            recovery_conflicts=conflicts.total,
            recovery_conflicts_per_second=conflicts.per_second,
        )
        return change

    @staticmethod
    def _scrubbed(verdict: Verdict, alias: str) -> Verdict:
        return verdict._replace(reason=scrub(verdict.reason, alias) or verdict.reason)

    # -- publishing ------------------------------------------------------------

    def _status(
        self, tracker: Tracker, result: Probe, *, lag_seconds: float | None, lag_bytes: int | None
    ) -> NodeStatus:
        is_primary = tracker.alias == self.config.primary
        return replace(
            row(tracker, self.config),
            checked_at=utc_now(),
            lag_seconds=lag_seconds,
            lag_bytes=lag_bytes,
            rtt=result.rtt,
            lsn=result.current_lsn if is_primary else result.replay_lsn,
        )

    def _measured(self) -> Published:
        """What this process's probes say now. Called with the lock held."""
        return Published.measured(
            self._trackers.values(),
            self.config,
            sharing=self._sharing(),
            source_of=self._source_of,
            discovery=None if self.discovery is None else self.discovery.state(),
        )

    def _sharing(self) -> Sharing | None:
        """Who probes, for the snapshot: None here; a fleet's monitor says."""
        return None

    @final
    def _publish(self, published: Published) -> Snapshot:
        """Route by ``published``: the one place where the balancer's weights,
        ``down``, ``freshness`` and ``snapshot`` change. Returns the snapshot.

        Called with the lock held (or from __init__).
        """
        for alias, lsn in published.replay_positions.items():
            self.note_replay_position(alias, lsn)
        rotation = published.rotation(self.config.replicas)
        if rotation is not None and self.discovery is not None:
            rotation = self.discovery.rotation_weights(rotation)
        balancer = self.balancer
        if balancer is not None and rotation is not None and dict(balancer.weights) != rotation:
            balancer.set_weights(rotation)
        self.down = published.down
        self.freshness = published.freshness
        self.snapshot = published.snapshot
        return published.snapshot

    def _announce(self, changes: list[Change | None]) -> None:
        for change in changes:
            if change is None:
                continue
            alias, old, new, reason = change
            log = logger.warning if new in (State.DOWN, State.EJECTED) else logger.info
            log("replica_router: %s %s -> %s (%s)", alias, old, new, reason)
            replica_state_changed.send(
                sender=Monitor, alias=alias, old_state=str(old), new_state=str(new), reason=reason
            )

    # -- what the application reports ----------------------------------------

    def note_replay_position(self, alias: str, lsn: int) -> None:
        """Record that ``alias`` has replayed up to ``lsn`` (positions only grow)."""
        # A plain dict assignment is atomic; a lost race only loses a newer
        # position that the next cycle brings back.
        if lsn > self.replay_positions.get(alias, -1):
            self.replay_positions[alias] = lsn

    def report_failure(self, alias: str, error: BaseException | str) -> None:
        """Take ``alias`` out of rotation now: the application could not connect to it.

        The monitor probes it again after the circuit breaker's backoff.
        """
        if alias not in self.config.replicas:
            return
        message = scrub(error if isinstance(error, str) else first_line(error), alias) or ""
        with self._lock:
            tracker = self._trackers[alias]
            tracker.last_error = message
            if tracker.state is State.DOWN and not tracker.in_rotation:
                return
            change = tracker.set_state(
                State.DOWN, f"connection failed in the application: {message}"
            )
            tracker.open_breaker(self._monotonic(), self.config.check_interval)
            self._publish(self._measured())
        self._announce([change])
