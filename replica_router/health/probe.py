"""Probing a node: what one probe asks PostgreSQL, over connections kept between probes.

psycopg only, no Django: the monitor hands in each alias's connection keywords.
A probe never raises; whatever goes wrong becomes a failed :class:`Probe`.

A probe keeps no state in its session, so that it works through PgBouncer in
transaction pooling mode, where each transaction of a client connection may
run on another server connection: its statement timeout is set with ``SET
LOCAL`` in each statement's own transaction (PgBouncer refuses the ``options``
start-up parameter, and a session ``SET`` would stay on a server connection
that other clients then get), and nothing is prepared server-side.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import psycopg

from replica_router.cutoff import registry
from replica_router.health.model import Probe
from replica_router.lsn import CURRENT_LSN, RECEIVE_LSN, REPLAY_LSN

__all__ = ["APPLICATION_NAME", "ParallelProber", "ProbeConnections", "ProcessExiting", "first_line"]

#: The ``application_name`` of the monitor's connections, unless the alias sets one.
APPLICATION_NAME: Final = "replica_router monitor"

# The recovery conflicts: pg_stat_database.conflicts is PostgreSQL's own total of
# pg_stat_database_conflicts' columns (confl_active_logicalslot included from 16
# on), so no list of columns per version. Any user may read it, in the same round
# trip. Only a standby has any, so a primary reports none (NULL).
_NODE_SQL = f"""
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE {CURRENT_LSN} END,
       {RECEIVE_LSN},
       {REPLAY_LSN},
       EXTRACT(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
       CASE WHEN pg_is_in_recovery() THEN
           (SELECT conflicts FROM pg_stat_database WHERE datname = current_database())
       END
"""
#: A replica that is replaying what it has just received (a checkpoint or
#: running-xacts record on an idle primary, say) is looked at once more after
#: this long before its lag is taken to be the age of its last transaction.
RECHECK_DELAY = 0.02
# Needs pg_monitor (or superuser) on managed services; without it these are
# skipped rather than failing the probe. Without pg_read_all_stats (which
# pg_monitor has) the WAL receiver's row shows only its pid: a NULL status is
# then not known, where no row at all means that no receiver runs.
_PRIVILEGED_SQL = """
SELECT (SELECT system_identifier FROM pg_control_system()),
       (SELECT coalesce(status, 'hidden') FROM pg_stat_wal_receiver LIMIT 1)
"""
_REPLICATION_SQL = """
SELECT application_name, EXTRACT(epoch FROM replay_lag)::float8
FROM pg_stat_replication WHERE replay_lag IS NOT NULL
"""


class ProcessExiting(Exception):
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
                result = _measure(kept, started, timeout)
            except (psycopg.Error, OSError):
                kept.close()  # broken, or killed by the server: try a new one
            else:
                self._keep(alias, wanted, kept, generation)
                return result
        try:
            conn = _connect(wanted, timeout)
        except (psycopg.Error, OSError) as exc:
            return Probe(ok=False, error=first_line(exc), rtt=time.perf_counter() - started)
        # A probe hung on a frozen server returns when the cut-off shuts this down.
        registry.register(alias, conn)
        try:
            result = _measure(conn, started, timeout)
        except (psycopg.Error, OSError) as exc:
            conn.close()
            return Probe(ok=False, error=first_line(exc), rtt=time.perf_counter() - started)
        self._keep(alias, wanted, conn, generation)
        return result

    def close(self) -> None:
        """Close every kept connection (made again by the next probe)."""
        with self._lock:
            kept, self._kept = self._kept, {}
            self._generation += 1
        for _, conn in kept.values():
            conn.close()

    def forget(self, alias: str) -> None:
        """Close ``alias``'s kept connection: it is no longer a node to probe."""
        with self._lock:
            entry = self._kept.pop(alias, None)
        if entry is not None:
            entry[1].close()

    def after_fork(self) -> None:
        """In a forked child: let go of the connections the parent kept.

        Closing one sends the server a Terminate message over the socket that
        the child shares with the parent, which would end the parent's session.
        So this process's copy of each socket is first pointed at /dev/null.
        Called by the process's at-fork hook (:mod:`replica_router.runtime`),
        while no other thread runs: the lock, which a thread of the parent may
        have held at the fork, is replaced rather than taken.
        """
        self._lock = threading.Lock()
        inherited, self._kept = self._kept, {}
        self._generation += 1
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
    # psycopg prepares a query it has run five times; behind a transaction
    # pooler the next run may land on a server connection that never saw it
    # ("prepared statement "_pg3_0" does not exist"). The probe's queries go
    # as simple queries (see _select), which are never prepared; this keeps
    # it so if one ever takes parameters.
    kwargs["prepare_threshold"] = None
    kwargs.setdefault("application_name", APPLICATION_NAME)
    return psycopg.connect(**kwargs)


def _select(conn: psycopg.Connection[Any], sql: str, timeout: float) -> psycopg.Cursor[Any]:
    """Run a SELECT with ``timeout`` as its statement timeout; the cursor is on its rows.

    One round trip: the two statements of a simple query run as one implicit
    transaction, which SET LOCAL lasts for, so the timeout is gone when the
    server connection goes back to a transaction pooler.
    """
    milliseconds = max(1, int(timeout * 1000))
    cursor = conn.execute(f"SET LOCAL statement_timeout = {milliseconds}; {sql}")
    cursor.nextset()
    return cursor


def _measure(conn: psycopg.Connection[Any], started: float, timeout: float) -> Probe:
    """Ask a node where it is; raises psycopg.Error if the connection fails."""
    row = _select(conn, _NODE_SQL, timeout).fetchone()
    assert row is not None
    if row[0] and not row[5] and None not in row[2:4] and row[3] < row[2]:
        time.sleep(RECHECK_DELAY)
        row = _select(conn, _NODE_SQL, timeout).fetchone()
        assert row is not None
    in_recovery, current, receive, replay, age, paused, conflicts = row
    system_identifier = streaming = None
    try:
        extra = _select(conn, _PRIVILEGED_SQL, timeout).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        pass
    else:
        assert extra is not None
        system_identifier = int(extra[0]) if extra[0] is not None else None
        if in_recovery and extra[1] != "hidden":
            streaming = extra[1] == "streaming"
    lags: dict[str, float] = {}
    if not in_recovery:
        with _suppress_privileges():
            lags = dict(_select(conn, _REPLICATION_SQL, timeout).fetchall())
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
        recovery_conflicts=None if conflicts is None else int(conflicts),
    )


class _suppress_privileges:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *args: object) -> bool:
        return exc_type is not None and issubclass(exc_type, psycopg.errors.InsufficientPrivilege)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class ParallelProber:
    """Probes several nodes at once, each on its kept connection, within a deadline.

    A probe that outlives the timeout counts as failed, and a node whose last
    probe still hangs is not probed again until it returns: a hung server
    never piles up threads.
    """

    def __init__(self, *, workers: int) -> None:
        self._workers = max(1, workers)
        self._connections = ProbeConnections()
        self._inflight: dict[str, Future[Probe]] = {}
        self._executor: ThreadPoolExecutor | None = None

    def probe(
        self,
        aliases: Iterable[str],
        params_for: Callable[[str], Mapping[str, Any]],
        *,
        timeout: float,
    ) -> dict[str, Probe]:
        """Probe ``aliases``; raises :class:`ProcessExiting` if the interpreter is exiting."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="replica-router-probe"
            )
        futures: dict[str, Future[Probe]] = {}
        results: dict[str, Probe] = {}
        for alias in aliases:
            pending = self._inflight.get(alias)
            if pending is not None and not pending.done():
                results[alias] = Probe(ok=False, error="previous probe still waiting")
                continue
            try:
                params = params_for(alias)
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
                raise ProcessExiting from None
            self._inflight[alias] = futures[alias]
        results.update(_collect(futures, timeout))
        return results

    def forget(self, alias: str) -> None:
        """``alias`` is no longer a node (discovery dropped it)."""
        self._inflight.pop(alias, None)
        self._connections.forget(alias)

    def resize(self, workers: int) -> None:
        """Probe ``workers`` nodes at once from now on (discovery changed their number)."""
        workers = max(1, workers)
        if workers != self._workers:
            self._workers = workers
            if self._executor is not None:
                # The probes in flight finish in the old threads; new ones start on use.
                self._executor.shutdown(wait=False)
                self._executor = None

    def close(self) -> None:
        """Stop the probe threads and close the kept connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._connections.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's probe threads did not come along, and
        its connections are the parent's (see :meth:`ProbeConnections.after_fork`)."""
        self._inflight = {}
        self._executor = None  # its threads are the parent's: a new one starts on use
        self._connections.after_fork()


def _collect(futures: Mapping[str, Future[Probe]], timeout: float) -> dict[str, Probe]:
    deadline = time.monotonic() + timeout
    results: dict[str, Probe] = {}
    for alias, future in futures.items():
        try:
            results[alias] = future.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            results[alias] = Probe(
                ok=False, error=f"no answer within CHECK_TIMEOUT ({timeout:g}s)", rtt=timeout
            )
        except Exception as exc:
            results[alias] = Probe(ok=False, error=first_line(exc))
    return results
