"""Replica health: what a probe measures, the states it leads to, and the monitor.

The monitor probes the primary and every replica each ``CHECK_INTERVAL`` in a
daemon thread, over connections of its own kept between probes, and publishes an
immutable :class:`Snapshot`. When the set of replicas fit to serve reads
changes, it swaps the router's weighted schedule in one assignment. The router
never waits for a probe: it only reads what the monitor last published.

Lag is measured two ways, and a replica over either threshold is ``lagging``:

* bytes: the primary's current WAL position minus the replica's replay
  position, both from the same cycle;
* seconds: 0 when the replica has replayed everything it received and is
  streaming (so an idle primary never makes its replicas look late), otherwise
  the age of the last transaction it replayed, or the primary's
  ``pg_stat_replication.replay_lag`` when it has replayed none yet.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from replica_router.balancer import Balancer
from replica_router.conf import RouterConfig
from replica_router.signals import replica_state_changed

__all__ = ["Monitor", "NodeStatus", "Probe", "Snapshot", "State"]

logger = logging.getLogger("replica_router")

#: A down replica is probed again after 1, 2, 4, then at most this many intervals.
MAX_BACKOFF_INTERVALS = 8


class State(enum.StrEnum):
    """Where a node stands; only ``healthy`` replicas serve reads."""

    HEALTHY = "healthy"
    LAGGING = "lagging"
    DOWN = "down"
    EJECTED = "ejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Probe:
    """What one probe of one node measured; None where it could not tell."""

    ok: bool
    error: str | None = None
    rtt: float | None = None
    in_recovery: bool | None = None
    system_identifier: int | None = None
    current_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    last_replay_age: float | None = None
    streaming: bool | None = None
    replay_paused: bool = False
    replay_lags: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One row of the health table: a node's state and the figures behind it."""

    alias: str
    role: str
    host: str
    port: str
    weight: int | None
    state: State
    in_rotation: bool
    reason: str
    since: datetime
    checked_at: datetime | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    rtt: float | None = None
    lsn: int | None = None
    last_error: str | None = None

    @property
    def lsn_text(self) -> str | None:
        """The WAL position as PostgreSQL prints it, e.g. ``0/3000148``."""
        if self.lsn is None:
            return None
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        """The JSON form (see docs/health.md); ``topology`` adds hosts and errors."""
        data: dict[str, Any] = {
            "alias": self.alias,
            "role": self.role,
            "state": str(self.state),
            "in_rotation": self.in_rotation,
            "lag_seconds": _round(self.lag_seconds, 3),
            "lag_bytes": self.lag_bytes,
        }
        if topology:
            data.update(
                {
                    "host": self.host,
                    "port": self.port,
                    "weight": self.weight,
                    "reason": self.reason,
                    "since": self.since.isoformat(),
                    "checked_at": self.checked_at.isoformat() if self.checked_at else None,
                    "rtt_ms": _round(None if self.rtt is None else self.rtt * 1000, 2),
                    "lsn": self.lsn_text,
                    "last_error": self.last_error,
                }
            )
        return data


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


#: Overall status -> exit status of ``replica_health --check`` (and HTTP 200/503).
OVERALL_CODES: Mapping[str, int] = {"ok": 0, "degraded": 1, "unavailable": 2}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every node's status at the end of one probe cycle. Immutable."""

    nodes: tuple[NodeStatus, ...]
    taken_at: datetime

    @property
    def primary(self) -> NodeStatus:
        return self.nodes[0]

    @property
    def replicas(self) -> tuple[NodeStatus, ...]:
        return self.nodes[1:]

    def node(self, alias: str) -> NodeStatus:
        for node in self.nodes:
            if node.alias == alias:
                return node
        raise KeyError(alias)

    @property
    def overall(self) -> str:
        """``ok``: every replica serves; ``degraded``: some do not; ``unavailable``:
        none does, or the primary is unreachable (down, or ejected: not a primary)."""
        serving = [n for n in self.replicas if n.in_rotation]
        primary_lost = self.primary.state in (State.DOWN, State.EJECTED)
        if primary_lost or (self.replicas and not serving):
            return "unavailable"
        if len(serving) < len(self.replicas):
            return "degraded"
        return "ok"

    @property
    def exit_code(self) -> int:
        return OVERALL_CODES[self.overall]

    def least_lagged(self) -> str | None:
        """The reachable, still-a-replica alias with the least lag, for FALLBACK."""
        candidates = [
            n for n in self.replicas if n.state in (State.HEALTHY, State.LAGGING) and n.weight != 0
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda n: (
                n.lag_bytes if n.lag_bytes is not None else math.inf,
                n.lag_seconds if n.lag_seconds is not None else math.inf,
            ),
        )
        return best.alias

    def as_dict(self, *, topology: bool) -> dict[str, Any]:
        return {
            "status": self.overall,
            "taken_at": self.taken_at.isoformat(),
            "nodes": [node.as_dict(topology=topology) for node in self.nodes],
        }


# -- probing -----------------------------------------------------------------

_NODE_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
       EXTRACT(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END
"""
#: A replica that is replaying what it has just received (a checkpoint or
#: running-xacts record on an idle primary, say) is looked at once more after
#: this long before its lag is taken to be the age of its last transaction.
RECHECK_DELAY = 0.02
# Needs pg_monitor (or superuser) on managed services; without it these are
# skipped rather than failing the probe.
_PRIVILEGED_SQL = """
SELECT (SELECT system_identifier FROM pg_control_system()),
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1)
"""
_REPLICATION_SQL = """
SELECT application_name, EXTRACT(epoch FROM replay_lag)::float8
FROM pg_stat_replication WHERE replay_lag IS NOT NULL
"""


class _ProcessExiting(Exception):
    """Raised by a cycle that finds the interpreter shutting down."""


class ProbeConnections:
    """The monitor's connections, one per node, kept from one probe to the next.

    Every process of a site runs a monitor. Connecting afresh at every probe
    would cost each server (processes x nodes) new connections, each a forked
    backend, every ``CHECK_INTERVAL``. A kept connection that fails is replaced
    by a new one at once, within the same probe: a server that restarted since
    the last probe is up, not down. A connection is also replaced when its
    alias's settings change (the test runner's switch to the test database).
    One probe per node runs at a time (the monitor does not start a second
    while the first is in flight), so a connection is never shared.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[dict[str, Any], psycopg.Connection[Any]]] = {}
        self._pid = os.getpid()
        #: Bumped by close(): a probe still running then does not keep its connection.
        self._generation = 0

    def probe(self, alias: str, params: Mapping[str, Any], *, timeout: float) -> Probe:
        """Measure ``alias`` on its kept connection, else on a new one. Never raises."""
        started = time.perf_counter()
        wanted = dict(params)
        generation = self._generation
        kept = self._take(alias, wanted)
        if kept is not None:
            try:
                result = _measure(kept, started)
            except (psycopg.Error, OSError):
                kept.close()  # broken, or killed by the server: try a new one
            else:
                self._keep(alias, wanted, kept, generation)
                return result
        try:
            conn = _connect(wanted, timeout)
        except (psycopg.Error, OSError) as exc:
            return Probe(ok=False, error=_first_line(exc), rtt=time.perf_counter() - started)
        try:
            result = _measure(conn, started)
        except (psycopg.Error, OSError) as exc:
            conn.close()
            return Probe(ok=False, error=_first_line(exc), rtt=time.perf_counter() - started)
        self._keep(alias, wanted, conn, generation)
        return result

    def close(self) -> None:
        """Close every kept connection (made again by the next probe)."""
        self._drop_inherited()
        with self._lock:
            kept, self._kept = self._kept, {}
            self._generation += 1
        for _, conn in kept.values():
            conn.close()

    def _drop_inherited(self) -> None:
        """In a child process, let go of the connections the parent kept.

        Closing one sends the server a Terminate message over the socket that
        the child shares with the parent, which would end the parent's session.
        So this process's copy of each socket is first pointed at /dev/null.
        """
        with self._lock:
            if self._pid == os.getpid():
                return
            inherited, self._kept = self._kept, {}
            self._pid = os.getpid()
        for _, conn in inherited.values():
            try:
                fd = conn.pgconn.socket
            except psycopg.Error:  # no socket left to share
                fd = -1
            if fd >= 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(devnull, fd)
                finally:
                    os.close(devnull)
            conn.close()

    def _take(self, alias: str, params: dict[str, Any]) -> psycopg.Connection[Any] | None:
        self._drop_inherited()
        with self._lock:
            entry = self._kept.pop(alias, None)
        if entry is None:
            return None
        kept_params, conn = entry
        if kept_params != params or conn.closed:
            conn.close()
            return None
        return conn

    def _keep(
        self, alias: str, params: dict[str, Any], conn: psycopg.Connection[Any], generation: int
    ) -> None:
        with self._lock:
            if generation != self._generation:  # closed meanwhile
                replaced: psycopg.Connection[Any] | None = conn
            else:
                entry = self._kept.get(alias)
                replaced = entry[1] if entry is not None else None
                self._kept[alias] = (params, conn)
        if replaced is not None:
            replaced.close()


def _connect(params: Mapping[str, Any], timeout: float) -> psycopg.Connection[Any]:
    kwargs = dict(params)
    kwargs["autocommit"] = True
    kwargs.setdefault("connect_timeout", max(2, math.ceil(timeout)))
    statement_timeout = f"-c statement_timeout={max(1, int(timeout * 1000))}"
    kwargs["options"] = f"{kwargs.get('options', '')} {statement_timeout}".strip()
    kwargs.setdefault("application_name", "replica_router monitor")
    return psycopg.connect(**kwargs)


def _measure(conn: psycopg.Connection[Any], started: float) -> Probe:
    """Ask a node where it is; raises psycopg.Error if the connection fails."""
    row = conn.execute(_NODE_SQL).fetchone()
    assert row is not None
    if row[0] and not row[5] and None not in row[2:4] and row[3] < row[2]:
        time.sleep(RECHECK_DELAY)
        row = conn.execute(_NODE_SQL).fetchone()
        assert row is not None
    in_recovery, current, receive, replay, age, paused = row
    system_identifier = streaming = None
    try:
        extra = conn.execute(_PRIVILEGED_SQL).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        pass
    else:
        assert extra is not None
        system_identifier = int(extra[0]) if extra[0] is not None else None
        streaming = extra[1] == "streaming" if in_recovery else None
    lags: dict[str, float] = {}
    if not in_recovery:
        with _suppress_privileges():
            lags = dict(conn.execute(_REPLICATION_SQL).fetchall())
    return Probe(
        ok=True,
        rtt=time.perf_counter() - started,
        in_recovery=bool(in_recovery),
        system_identifier=system_identifier,
        current_lsn=current,
        receive_lsn=receive,
        replay_lsn=replay,
        last_replay_age=None if age is None else max(0.0, float(age)),
        streaming=streaming,
        replay_paused=bool(paused),
        replay_lags=lags,
    )


class _suppress_privileges:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *args: object) -> bool:
        return exc_type is not None and issubclass(exc_type, psycopg.errors.InsufficientPrivilege)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def django_probe_params(alias: str) -> dict[str, Any]:
    """psycopg connection keywords for ``alias``, built by Django's own backend.

    Read afresh each cycle, so the test runner's switch to the test database
    is followed. The pool options are dropped: probes never use the pool.
    """
    from django.db import connections

    wrapper = connections.create_connection(alias)
    params: dict[str, Any] = wrapper.get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold", "pool"):
        params.pop(key, None)
    return params


def _settings_of(alias: str) -> Mapping[str, Any]:
    from django.db import connections

    settings_dict: Mapping[str, Any] = connections.settings.get(alias, {})
    return settings_dict


def _is_postgresql(alias: str) -> bool:
    engine = str(_settings_of(alias).get("ENGINE", ""))
    return "postgresql" in engine or "postgis" in engine


def _scrub(text: str | None, alias: str) -> str | None:
    """Remove the alias's password from a message, should a driver ever echo it."""
    if not text:
        return text
    password = str(_settings_of(alias).get("PASSWORD") or "")
    return text.replace(password, "********") if password else text


# -- the monitor -------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Tracker:
    """A node's state across cycles: hysteresis and the circuit breaker."""

    alias: str
    state: State = State.UNKNOWN
    in_rotation: bool = False
    reason: str = "not probed yet"
    since: datetime = field(default_factory=_now)
    good_streak: int = 0
    failures: int = 0
    next_probe_at: float = 0.0
    last_error: str | None = None
    status: NodeStatus | None = None
    #: When a cycle that found the replica caught up started (monotonic).
    caught_up_at: float | None = None


class Monitor:
    """Probes the primary and replicas and keeps the router's rotation right.

    ``Monitor(config=..., balancer=...)``; :meth:`start` runs it in a daemon
    thread, :meth:`run_cycle` runs one cycle in the caller's thread (the
    management command does that). ``params_for(alias)`` gives the psycopg
    connection keywords of an alias; it defaults to Django's settings.
    """

    def __init__(
        self,
        *,
        config: RouterConfig,
        balancer: Balancer | None = None,
        params_for: Callable[[str], Mapping[str, Any]] = django_probe_params,
    ) -> None:
        if config.check_interval <= 0 or config.check_timeout <= 0:
            raise ValueError("check_interval and check_timeout must be positive")
        self.config = config
        self.balancer = balancer
        self._params_for = params_for
        self._connections = ProbeConnections()
        self._lock = threading.Lock()
        self._trackers = {alias: _Tracker(alias) for alias in [config.primary, *config.replicas]}
        self._inflight: dict[str, Future[Probe]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_cycle = threading.Event()
        self._pid = os.getpid()
        self.cycles = 0
        #: Replica alias -> the latest replay position known (read-your-writes).
        self.replay_positions: dict[str, int] = {}
        #: The aliases found down, for a connection about to be made (cheaper
        #: to ask than the snapshot).
        self.down: frozenset[str] = frozenset()
        self.snapshot: Snapshot = self._publish()

    # -- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def start(self, *, wait: bool = True) -> None:
        """Start the monitor thread; with ``wait``, return after its first cycle
        (or after ``CHECK_TIMEOUT`` plus a little, whichever comes first)."""
        with self._lock:
            already_running = self.running
        if already_running:
            # Started by another thread: still wait for its first cycle, so that
            # no caller ever routes by an all-"unknown" snapshot.
            if wait:
                self._first_cycle.wait(self.config.check_timeout + 0.25)
            return
        with self._lock:
            if self.running:
                return
            if self._pid != os.getpid():  # forked: the parent's threads did not come along
                self._pid = os.getpid()
                self._inflight.clear()
                self._executor = None
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
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.config.check_timeout + 1)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._connections.close()

    def _loop(self) -> None:
        interval = self.config.check_interval
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except _ProcessExiting:
                return
            except Exception:  # a bug here must not kill monitoring for good
                logger.exception("replica health cycle failed")
            finally:
                self._first_cycle.set()
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    # -- one cycle -------------------------------------------------------------

    def run_cycle(self) -> Snapshot:
        """Probe every node that is due, update states, publish and return a snapshot."""
        now = time.monotonic()
        due = [
            alias
            for alias, tracker in self._trackers.items()
            if tracker.next_probe_at <= now and self._probeable(alias)
        ]
        probes = self._probe_all(due)
        primary_probe = probes.get(self.config.primary)
        changes: list[tuple[str, State, State, str]] = []
        with self._lock:
            if primary_probe is not None:
                self._update_primary(primary_probe, changes)
            for alias in self.config.replicas:
                if alias in probes:
                    self._update_replica(alias, probes[alias], primary_probe, changes, now)
                elif not self._probeable(alias):
                    self._set_state(
                        self._trackers[alias],
                        State.HEALTHY,
                        "not probed: not a PostgreSQL alias",
                        changes,
                        in_rotation=True,
                    )
            self.cycles += 1
            snapshot = self._publish()
        self._announce(changes)
        return snapshot

    def _probeable(self, alias: str) -> bool:
        if self._params_for is not django_probe_params:
            return True
        return _is_postgresql(alias)

    def _probe_all(self, aliases: Iterable[str]) -> dict[str, Probe]:
        """Probe in parallel; a probe that outlives CHECK_TIMEOUT counts as failed."""
        timeout = self.config.check_timeout
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, len(self._trackers)), thread_name_prefix="replica-router-probe"
            )
        futures: dict[str, Future[Probe]] = {}
        results: dict[str, Probe] = {}
        for alias in aliases:
            pending = self._inflight.get(alias)
            if pending is not None and not pending.done():
                # The last probe of this node is still hanging: do not pile up more.
                results[alias] = Probe(ok=False, error="previous probe still waiting")
                continue
            try:
                params = self._params_for(alias)
            except Exception as exc:
                results[alias] = Probe(ok=False, error=f"cannot build connection: {exc}")
                continue
            try:
                futures[alias] = self._executor.submit(
                    self._connections.probe, alias, params, timeout=timeout
                )
            except RuntimeError:
                # The interpreter is exiting (a worker told to stop, say): its
                # thread pools take no more work, and the process needs no more probes.
                self._stop.set()
                raise _ProcessExiting from None
            self._inflight[alias] = futures[alias]
        deadline = time.monotonic() + timeout
        for alias, future in futures.items():
            try:
                results[alias] = future.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                results[alias] = Probe(
                    ok=False, error=f"no answer within CHECK_TIMEOUT ({timeout:g}s)", rtt=timeout
                )
            except Exception as exc:
                results[alias] = Probe(ok=False, error=_first_line(exc))
        return results

    def _update_primary(self, result: Probe, changes: list[tuple[str, State, State, str]]) -> None:
        tracker = self._trackers[self.config.primary]
        if not result.ok:
            self._set_state(tracker, State.DOWN, result.error or "unreachable", changes)
            tracker.last_error = _scrub(result.error, tracker.alias)
        elif result.in_recovery:
            self._set_state(
                tracker, State.EJECTED, "in recovery: this is a standby, not a primary", changes
            )
        else:
            self._set_state(tracker, State.HEALTHY, "reachable", changes, in_rotation=True)
        tracker.status = self._status(tracker, result, lag_seconds=None, lag_bytes=None)

    def _update_replica(
        self,
        alias: str,
        result: Probe,
        primary: Probe | None,
        changes: list[tuple[str, State, State, str]],
        cycle_started: float,
    ) -> None:
        config = self.config
        tracker = self._trackers[alias]
        primary_ok = primary is not None and primary.ok and not primary.in_recovery
        lag_bytes = lag_seconds = None
        if result.ok:
            if result.replay_lsn is not None:
                self.note_replay_position(alias, result.replay_lsn)
            if primary_ok and primary is not None and primary.current_lsn is not None:
                lag_bytes = max(0, primary.current_lsn - (result.replay_lsn or 0))
            lag_seconds = _lag_seconds(result, primary if primary_ok else None, alias)
            if lag_seconds == 0.0:
                tracker.caught_up_at = cycle_started
            elif lag_seconds is not None and tracker.caught_up_at is not None:
                # It was caught up when an earlier cycle started, so it lacks
                # nothing older than that. After a quiet spell this is far
                # tighter than the age of the last transaction it replayed.
                lag_seconds = min(lag_seconds, time.monotonic() - tracker.caught_up_at)

        if not result.ok:
            verdict, reason = State.DOWN, result.error or "unreachable"
        elif not result.in_recovery:
            verdict, reason = State.EJECTED, "promoted: pg_is_in_recovery() is false"
        elif (
            primary_ok
            and primary is not None
            and primary.system_identifier is not None
            and result.system_identifier is not None
            and primary.system_identifier != result.system_identifier
        ):
            verdict, reason = (
                State.EJECTED,
                f"another cluster: system identifier {result.system_identifier} "
                f"is not the primary's {primary.system_identifier}",
            )
        elif lag_bytes is not None and lag_bytes > config.max_lag_bytes:
            verdict, reason = (
                State.LAGGING,
                f"{lag_bytes} bytes behind (MAX_LAG_BYTES {config.max_lag_bytes})"
                + _paused_note(result),
            )
        elif (
            lag_seconds is not None
            and lag_seconds > 0
            and lag_seconds + probe_gap(config) > config.max_lag_seconds
        ):
            # Lag grows at most one second per second, and the next verdict is at
            # most one probe gap away: a replica that could pass MAX_LAG_SECONDS
            # by then leaves rotation now, so no read is served with more lag.
            verdict, reason = (
                State.LAGGING,
                f"{lag_seconds:.1f}s behind (MAX_LAG_SECONDS {config.max_lag_seconds:g}, "
                f"less {probe_gap(config):g}s until the next probe)" + _paused_note(result),
            )
        else:
            verdict, reason = State.HEALTHY, "in rotation"

        now = time.monotonic()
        if verdict is State.HEALTHY:
            tracker.failures = 0
            tracker.next_probe_at = 0.0
            if tracker.in_rotation or tracker.state is State.UNKNOWN:
                self._set_state(tracker, State.HEALTHY, reason, changes, in_rotation=True)
            else:
                tracker.good_streak += 1
                if tracker.good_streak >= config.recovery_checks:
                    self._set_state(tracker, State.HEALTHY, "recovered", changes, in_rotation=True)
                else:
                    tracker.reason = (
                        f"recovering: {tracker.good_streak}/{config.recovery_checks} good probes"
                    )
        else:
            self._set_state(tracker, verdict, reason, changes)
            if verdict is State.DOWN:
                self._open_breaker(tracker, now)
                tracker.last_error = _scrub(result.error, alias)
            else:
                tracker.failures = 0
                tracker.next_probe_at = 0.0
        tracker.status = self._status(tracker, result, lag_seconds=lag_seconds, lag_bytes=lag_bytes)

    def _open_breaker(self, tracker: _Tracker, now: float) -> None:
        tracker.failures += 1
        backoff = min(2 ** (tracker.failures - 1), MAX_BACKOFF_INTERVALS)
        tracker.next_probe_at = now + backoff * self.config.check_interval

    def _set_state(
        self,
        tracker: _Tracker,
        state: State,
        reason: str,
        changes: list[tuple[str, State, State, str]],
        *,
        in_rotation: bool = False,
    ) -> None:
        reason = _scrub(reason, tracker.alias) or reason
        if not in_rotation:
            tracker.good_streak = 0
        tracker.in_rotation = in_rotation
        tracker.reason = reason
        if tracker.state is not state:
            changes.append((tracker.alias, tracker.state, state, reason))
            tracker.state = state
            tracker.since = _now()

    def _status(
        self,
        tracker: _Tracker,
        result: Probe,
        *,
        lag_seconds: float | None,
        lag_bytes: int | None,
    ) -> NodeStatus:
        is_primary = tracker.alias == self.config.primary
        return replace(
            self._row(tracker, checked_at=_now()),
            lag_seconds=lag_seconds,
            lag_bytes=lag_bytes,
            rtt=result.rtt,
            lsn=result.current_lsn if is_primary else result.replay_lsn,
        )

    def _row(self, tracker: _Tracker, *, checked_at: datetime | None) -> NodeStatus:
        settings_dict = _safe_settings(tracker.alias)
        is_primary = tracker.alias == self.config.primary
        return NodeStatus(
            alias=tracker.alias,
            role="primary" if is_primary else "replica",
            host=str(settings_dict.get("HOST") or "localhost"),
            port=str(settings_dict.get("PORT") or "5432"),
            weight=None if is_primary else self.config.replicas[tracker.alias],
            state=tracker.state,
            in_rotation=tracker.in_rotation,
            reason=tracker.reason,
            since=tracker.since,
            checked_at=checked_at,
            last_error=tracker.last_error,
        )

    def _publish(self) -> Snapshot:
        """Build the snapshot from the trackers and swap the rotation if it changed.

        Called with the lock held (or from __init__).
        """
        rows = []
        for tracker in self._trackers.values():
            if tracker.status is None:
                rows.append(self._row(tracker, checked_at=None))
            else:
                rows.append(
                    replace(
                        tracker.status,
                        state=tracker.state,
                        in_rotation=tracker.in_rotation,
                        reason=tracker.reason,
                        since=tracker.since,
                        last_error=tracker.last_error,
                    )
                )
        snapshot = Snapshot(nodes=tuple(rows), taken_at=_now())
        if self.balancer is not None and any(
            t.state is not State.UNKNOWN for t in self._trackers.values()
        ):
            rotation = {
                alias: weight
                for alias, weight in self.config.replicas.items()
                if self._trackers[alias].in_rotation
            }
            if dict(self.balancer.weights) != rotation:
                self.balancer.set_weights(rotation)
        self.down = frozenset(n.alias for n in rows if n.state is State.DOWN)
        self.snapshot = snapshot
        return snapshot

    def _announce(self, changes: list[tuple[str, State, State, str]]) -> None:
        for alias, old, new, reason in changes:
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
        message = _scrub(error if isinstance(error, str) else _first_line(error), alias)
        changes: list[tuple[str, State, State, str]] = []
        with self._lock:
            tracker = self._trackers[alias]
            if tracker.state is State.DOWN and not tracker.in_rotation:
                tracker.last_error = message
                return
            self._set_state(
                tracker, State.DOWN, f"connection failed in the application: {message}", changes
            )
            tracker.last_error = message
            self._open_breaker(tracker, time.monotonic())
            self._publish()
        self._announce(changes)


def _safe_settings(alias: str) -> Mapping[str, Any]:
    try:
        return _settings_of(alias)
    except Exception:  # settings not configured: a standalone monitor
        return {}


def probe_gap(config: RouterConfig) -> float:
    """The longest wait between two verdicts on a replica: the interval between
    cycles plus the time a probe may take."""
    return config.check_interval + config.check_timeout


def _paused_note(result: Probe) -> str:
    return "; WAL replay is paused" if result.replay_paused else ""


def _lag_seconds(result: Probe, primary: Probe | None, alias: str) -> float | None:
    """Replication lag in seconds that stays 0 on an idle, caught-up replica."""
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
        if alias in primary.replay_lags:
            return primary.replay_lags[alias]
        return 0.0
    if result.last_replay_age is not None:
        return result.last_replay_age
    if primary is not None and alias in primary.replay_lags:
        return primary.replay_lags[alias]
    return None
