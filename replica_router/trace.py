"""The routing trace: where each query of a request ran, and why it went there.

The django-debug-toolbar panel (:mod:`replica_router.contrib.debug_toolbar`)
shows it; a test can use it too::

    with tracing() as trace:
        client.get("/books/")
    assert {query.reason for query in trace.queries} == {"replica"}

Two streams meet in a :class:`Trace`:

* the router's decisions, ``(alias, reason)``, each time it routes a read or a
  write, which a :class:`Tracer` receives;
* the queries, which an execute wrapper records on every connection while the
  trace is active, with the alias they ran on and their time.

A query takes the latest decision made for its alias since the previous query
on that alias; a query that no decision explains ran ``"direct"``: code that
chose its connection itself (``.using(alias)``, ``connections[alias]``, the
router's own WAL position checks). When the failover engine has made the
connection to a stand-in (``borrowed_from``), the query ran there instead.

The trace lives in a context variable, like the rest of the request's state,
so concurrent requests (threads or asyncio tasks, WSGI or ASGI) each have
their own, and code run through ``sync_to_async`` adds to its caller's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

from django.db import connections

from replica_router import runtime
from replica_router.context import CausalState, causal_state
from replica_router.lsn import INSERT_LSN, REPLAY_LSN

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from replica_router.metrics import Counters

__all__ = [
    "DIRECT",
    "FAILOVER",
    "REASONS",
    "Trace",
    "TracedQuery",
    "Tracer",
    "active_trace",
    "install",
    "tracing",
]

#: The reason of a query that no routing decision explains.
DIRECT: Final = "direct"
#: The reason of a query that ran on a stand-in: its replica could not serve it.
FAILOVER: Final = "failover"
#: Every reason a traced query can have: the router's read reasons (the
#: ``reason`` label of the ``replica_router_reads_total`` metric), ``write``,
#: and the two above.
REASONS: Final = (
    "replica",
    "use_primary",
    "transaction",
    "primary_only",
    "pinned",
    "monotonic",
    "max_lag",
    "fallback",
    "no_replicas",
    "migrate",
    "write",
    FAILOVER,
    DIRECT,
)

# Queries that the router and the pinning middleware run themselves, on the
# connection they choose: "direct" by the rule above, and named so.
_OWN_QUERIES: Final = (
    (REPLAY_LSN, "the router asks whether this replica has replayed the write"),
    (INSERT_LSN, "the primary's WAL position after this request's write"),
)
_TRANSACTION_CONTROL: Final = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


@dataclass(frozen=True, slots=True)
class TracedQuery:
    """One query of a trace: where it ran and why."""

    #: Its place in the trace, from 1.
    index: int
    #: The alias whose server ran it.
    alias: str
    #: Why it went there: one of :data:`REASONS`.
    reason: str
    sql: str
    seconds: float
    #: The alias the query was routed to, when a stand-in ran it (:data:`FAILOVER`).
    failover_from: str | None = None
    #: Why the router sent it to ``failover_from``, for a failover.
    routed_for: str | None = None
    #: What a "direct" query is, when it is one the library runs itself.
    note: str | None = None
    #: The exception's class name, if the query failed.
    error: str | None = None
    #: ``executemany``: one call, many parameter sets.
    many: bool = False


class Trace:
    """The routing decisions and queries of one request (or one :class:`tracing` block)."""

    __slots__ = ("_lock", "_pending", "_stand_ins", "conflicts", "failovers", "queries", "state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Alias -> the reason of the latest decision for it not yet taken by a query.
        self._pending: dict[str, str] = {}
        # Alias -> the stand-in the failover engine connected to since its last query.
        self._stand_ins: dict[str, str] = {}
        #: The queries, in the order they finished.
        self.queries: list[TracedQuery] = []
        #: ``(from_alias, to_alias)`` for each connection made to a stand-in.
        self.failovers: list[tuple[str, str]] = []
        #: The aliases that cancelled a read for a conflict with recovery.
        self.conflicts: list[str] = []
        #: The causal state the request's reads ran under (pins, monotonic
        #: reads), as first seen; it is the live object, so it shows the
        #: request's last word once the request is over.
        self.state: CausalState | None = None

    def decide(self, alias: str, reason: str) -> None:
        """The router sent a read or a write to ``alias`` for ``reason``."""
        with self._lock:
            self._pending[alias] = reason

    def note_failover(self, from_alias: str, to_alias: str) -> None:
        """A connection for ``from_alias`` was made to ``to_alias``'s server instead."""
        with self._lock:
            self.failovers.append((from_alias, to_alias))
            self._stand_ins[from_alias] = to_alias

    def note_conflict(self, alias: str) -> None:
        """``alias`` cancelled a read for a conflict with recovery; it runs again elsewhere."""
        with self._lock:
            self.conflicts.append(alias)

    def see_state(self, state: CausalState | None) -> None:
        """Keep the first causal state the request's routing ran under."""
        if self.state is None and state is not None:
            self.state = state

    def record(
        self,
        *,
        alias: str,
        sql: str,
        seconds: float,
        borrowed_from: str | None = None,
        many: bool = False,
        error: str | None = None,
    ) -> TracedQuery:
        """Add a query that ran on the connection of ``alias``, matched to its decision.

        ``borrowed_from`` is the connection's ``borrowed_from`` after the query:
        the stand-in whose server ran it, if the failover engine made one.
        """
        with self._lock:
            reason = self._pending.pop(alias, DIRECT)
            stand_in = borrowed_from or self._stand_ins.pop(alias, None)
            self._stand_ins.pop(alias, None)
            if stand_in is not None and stand_in != alias:
                query = TracedQuery(
                    index=len(self.queries) + 1,
                    alias=stand_in,
                    reason=FAILOVER,
                    sql=sql,
                    seconds=seconds,
                    failover_from=alias,
                    routed_for=reason,
                    error=error,
                    many=many,
                )
            else:
                query = TracedQuery(
                    index=len(self.queries) + 1,
                    alias=alias,
                    reason=reason,
                    sql=sql,
                    seconds=seconds,
                    note=_note_for(sql) if reason == DIRECT else None,
                    error=error,
                    many=many,
                )
            self.queries.append(query)
            return query


def _note_for(sql: str) -> str | None:
    for expression, note in _OWN_QUERIES:
        if expression in sql:
            return note
    if sql.lstrip().upper().startswith(_TRANSACTION_CONTROL):
        return "transaction control of atomic()"
    return None


_active: ContextVar[Trace | None] = ContextVar("replica_router.trace", default=None)


def active_trace() -> Trace | None:
    """The trace of the running request or :class:`tracing` block, if any."""
    return _active.get()


# -- the router's side: decisions -------------------------------------------------


class _ReplicaNotes(dict[str, Callable[[], int]]):
    """Replica alias -> its note; a replica discovery adds gets one on its first read."""

    def __init__(self, wrapped: Counters | None) -> None:
        super().__init__()
        self._wrapped = wrapped

    def __missing__(self, alias: str) -> Callable[[], int]:
        forward = self._wrapped.reads_on_replica[alias] if self._wrapped else None
        note = self[alias] = _Note(alias, "replica", forward)
        return note


class _Note:
    """A counter of the Counters interface that also records a decision."""

    __slots__ = ("alias", "forward", "reason")

    def __init__(self, alias: str, reason: str, forward: Callable[[], int] | None) -> None:
        self.alias = alias
        self.reason = reason
        self.forward = forward

    def __call__(self) -> int:
        trace = _active.get()
        if trace is not None:
            trace.see_state(causal_state.get())
            trace.decide(self.alias, self.reason)
        return self.forward() if self.forward is not None else 0


class Tracer:
    """The router's metrics counters (:class:`replica_router.metrics.Counters`),
    recording each decision into the active trace as well.

    The router reports every routing decision through ``Routing.counters``
    (and the failover engine every stand-in), so this is where the trace hooks
    in: with nothing to change in the router, and at no cost to a process
    that never traces, whose ``Routing.counters`` stays the plain counters or
    None. A Tracer forwards to the counters it replaced (``wrapped``; None
    with ``METRICS`` off), so metrics count as before.
    """

    __slots__ = (
        "pins_honoured",
        "pins_set",
        "reads_in_transaction",
        "reads_on_replica",
        "reads_pinned",
        "reads_primary_only",
        "reads_use_primary",
        "wrapped",
        "writes",
    )

    def __init__(self, *, primary: str, replicas: Iterable[str], wrapped: Counters | None) -> None:
        self.wrapped = wrapped
        self.reads_use_primary = _Note(
            primary, "use_primary", wrapped.reads_use_primary if wrapped else None
        )
        self.reads_primary_only = _Note(
            primary, "primary_only", wrapped.reads_primary_only if wrapped else None
        )
        self.reads_in_transaction = _Note(
            primary, "transaction", wrapped.reads_in_transaction if wrapped else None
        )
        self.reads_pinned = _Note(primary, "pinned", wrapped.reads_pinned if wrapped else None)
        self.writes = _Note(primary, "write", wrapped.writes if wrapped else None)
        #: Replica alias -> the counter of reads the weighted schedule sent it.
        self.reads_on_replica: Mapping[str, Callable[[], int]] = _ReplicaNotes(wrapped)
        for alias in sorted(replicas):
            self.reads_on_replica[alias]
        self.pins_set: Callable[[], int] = wrapped.pins_set if wrapped else _zero
        self.pins_honoured: Callable[[], int] = wrapped.pins_honoured if wrapped else _zero

    def read(self, alias: str, reason: str) -> None:
        """Record and count a read routed to ``alias`` for ``reason``."""
        trace = _active.get()
        if trace is not None:
            trace.see_state(causal_state.get())
            trace.decide(alias, reason)
        if self.wrapped is not None:
            self.wrapped.read(alias, reason)

    def failover(self, from_alias: str, to_alias: str) -> None:
        """Record and count a connection made to ``to_alias`` because ``from_alias`` failed."""
        trace = _active.get()
        if trace is not None:
            trace.note_failover(from_alias, to_alias)
        if self.wrapped is not None:
            self.wrapped.failover(from_alias, to_alias)

    def recovery_conflict(self, alias: str) -> None:
        """Record and count a read ``alias`` cancelled for a conflict with recovery."""
        trace = _active.get()
        if trace is not None:
            trace.note_conflict(alias)
        if self.wrapped is not None:
            self.wrapped.recovery_conflict(alias)


def _zero() -> int:
    return 0


_install_lock = threading.Lock()


def install() -> Tracer:
    """Put a :class:`Tracer` in the current routing's counters; return it.

    Idempotent. A change of ``REPLICA_ROUTER`` or ``DATABASES`` builds a new
    routing without it, so call this at the start of each traced request
    (:class:`tracing` does).
    """
    with _install_lock:
        routing = runtime.current or runtime.load()
        counters: object = routing.counters
        if isinstance(counters, Tracer):
            return counters
        tracer = Tracer(
            primary=routing.primary, replicas=routing.replicas, wrapped=routing.counters
        )
        # It has the Counters interface; Counters itself is not imported at
        # run time, as it needs the metrics extra.
        routing.counters = cast("Counters", tracer)
        return tracer


# -- the connections' side: queries ------------------------------------------------


def _record_query(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper: record the query into the active trace."""
    trace = _active.get()
    if trace is None:
        return execute(sql, params, many, context)
    connection = context["connection"]
    trace.see_state(causal_state.get())
    error: str | None = None
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        seconds = time.perf_counter() - started
        # Read after the query: a read that failed over borrowed on the way.
        trace.record(
            alias=connection.alias,
            sql=sql if isinstance(sql, str) else str(sql),
            seconds=seconds,
            borrowed_from=getattr(connection, "borrowed_from", None),
            many=many,
            error=error,
        )


class tracing:  # noqa: N801 - used like a function, as ``with tracing() as trace:``
    """Trace the routing of the queries of a block into a new :class:`Trace`.

    Entering installs the :class:`Tracer` and makes the trace active;
    :meth:`watch` (called on entering unless ``watch=False``) adds the
    query recorder to this thread's connections with Django's
    ``execute_wrappers``. Leaving removes what it added. Blocks may nest: the
    inner one has a trace of its own.

    :meth:`start` and :meth:`stop` do the same for code that cannot use a
    ``with`` block (a toolbar panel). Under ASGI, call :meth:`watch` in the
    thread that runs the view (through ``sync_to_async``), as Django's
    connections belong to a thread.
    """

    __slots__ = ("_reset", "_watch", "_watched", "trace")

    def __init__(self, *, watch: bool = True) -> None:
        self.trace = Trace()
        self._watch = watch
        self._reset: Token[Trace | None] | None = None
        self._watched: list[BaseDatabaseWrapper] = []

    def start(self) -> Trace:
        """Install the tracer and make the trace active (and :meth:`watch`, unless told not to)."""
        if self._reset is not None:
            raise RuntimeError("This tracing() block is already active.")
        install()
        self.trace.see_state(causal_state.get())
        self._reset = _active.set(self.trace)
        if self._watch:
            self.watch()
        return self.trace

    def watch(self) -> None:
        """Record the queries of this thread's connections (every alias). Idempotent."""
        for connection in connections.all():
            if _record_query not in connection.execute_wrappers:
                connection.execute_wrappers.append(_record_query)
                self._watched.append(connection)

    def stop(self) -> None:
        """Remove what :meth:`start` and :meth:`watch` added. Idempotent."""
        watched, self._watched = self._watched, []
        for connection in watched:
            if _record_query in connection.execute_wrappers:
                connection.execute_wrappers.remove(_record_query)
        reset, self._reset = self._reset, None
        if reset is not None:
            try:
                _active.reset(reset)
            except ValueError:  # stopped from another context than it started in
                _active.set(None)

    def __enter__(self) -> Trace:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
