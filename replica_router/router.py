"""The DATABASE_ROUTERS class: writes go to the primary, reads to the replicas.

Django calls ``db_for_read`` for every query, so it does no I/O and no settings
lookups: everything it needs is in the process's
:class:`~replica_router.runtime.Routing`, built once from the config and rebuilt
when ``override_settings`` changes ``REPLICA_ROUTER`` or ``DATABASES``.
"""

from __future__ import annotations

import logging
import random
import time
from asyncio import _get_running_loop
from typing import TYPE_CHECKING, Any

from django.db import connections

from replica_router import runtime, transactions
from replica_router.context import CausalState, causal_state, lag_budget, read_override
from replica_router.exceptions import NoReplicaAvailable
from replica_router.lsn import REPLAY_LSN, query_lsn
from replica_router.runtime import PRIMARY, REPLICA, Routing, role_of

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["ReplicaRouter", "alternative_for"]

logger = logging.getLogger("replica_router")

# Bound once: db_for_read runs on every query, and a bound method saves it an
# attribute lookup per context variable.
_get_read_override = read_override.get
_get_causal_state = causal_state.get


def _route_in_context(
    routing: Routing, state: CausalState | None, budget: float | None
) -> tuple[str, str]:
    """Where a read goes, and why, under a causal state or a staleness budget.

    In order: read-your-writes pins; monotonic reads keep the node this context
    read from; then a replica that has the context's write (``min_lsn``) and
    keeps its budget; else the primary, or FALLBACK when nothing binds the read.
    """
    if state is not None:
        if routing.read_your_writes and (state.wrote or state.pinned):
            return routing.primary, "pinned"
        node = state.reading_from
        if node is not None:
            if node != routing.primary and _may_serve(routing, node, budget):
                return node, "replica" if node in routing.balancer.rotation else "max_lag"
            state.reading_from = routing.primary
            return routing.primary, "monotonic"
    min_lsn = state.min_lsn if state is not None and routing.read_your_writes else None
    alias = _replica_for(routing, state, min_lsn, budget)
    if alias is not None:
        reason = "replica" if alias in routing.balancer.rotation else "max_lag"
    elif min_lsn is not None:
        alias, reason = routing.primary, "pinned"
    elif budget is not None:
        alias, reason = routing.primary, "max_lag"
    else:
        alias = _no_replica(routing)
        reason = "fallback" if routing.replicas else "no_replicas"
    if state is not None and routing.monotonic_reads:
        state.reading_from = alias
    return alias, reason


def _may_serve(routing: Routing, alias: str, budget: float | None) -> bool:
    """Whether a replica may serve a read now: in rotation, or within the budget."""
    if budget is None:
        return alias in routing.balancer.rotation
    return _within_budget(routing, alias, budget, loose=budget > routing.config.max_lag_seconds)


def _within_budget(routing: Routing, alias: str, budget: float, *, loose: bool) -> bool:
    """Whether ``alias``'s lag cannot exceed ``budget`` before its next verdict.

    The monitor's promise for MAX_LAG_SECONDS, applied to the budget: lag grows
    at most one second per second, and the next verdict is at most a probe gap
    after the cycle that measured it (longer if the monitor falls behind).
    A ``loose`` budget (above MAX_LAG_SECONDS) also admits a replica that is
    out of rotation for lag alone.
    """
    if routing.monitor is None:
        return False  # nothing measures lag, so nothing can be promised
    freshness = routing.monitor.freshness.get(alias)
    if freshness is None or not (freshness.in_rotation or loose):
        return False
    age = max(routing.probe_gap, time.monotonic() - freshness.measured_at)
    return freshness.lag_seconds + age <= budget


def _replica_for(
    routing: Routing, state: CausalState | None, min_lsn: int | None, budget: float | None
) -> str | None:
    """A replica for this read that has replayed ``min_lsn`` and keeps the
    budget, or None. Picked by the weighted schedule among the replicas in
    rotation; for a loose budget, by weight among those in rotation and those
    out of it for lag alone."""
    if budget is not None and budget > routing.config.max_lag_seconds:
        return _loose_replica_for(routing, state, min_lsn, budget)
    for _ in range(len(routing.balancer.weights)):
        alias = routing.balancer.pick()
        if alias is None:
            break
        if budget is not None and not _within_budget(routing, alias, budget, loose=False):
            continue
        if min_lsn is not None and not _caught_up(routing, state, alias, min_lsn):
            continue
        return alias
    return None


def _loose_replica_for(
    routing: Routing, state: CausalState | None, min_lsn: int | None, budget: float
) -> str | None:
    # A report that tolerates minutes reads from lagging replicas as well as
    # healthy ones: during a lag storm its load stays off the primary, and it
    # is spread over every replica that can take it.
    if routing.monitor is None:
        return None
    weights = routing.config.replicas
    candidates = [
        alias
        for alias in routing.monitor.freshness
        if weights.get(alias, 0) > 0 and _within_budget(routing, alias, budget, loose=True)
    ]
    # A random order weighted by the replicas' weights (Efraimidis-Spirakis).
    candidates.sort(key=lambda alias: random.random() ** (1 / weights[alias]), reverse=True)
    for alias in candidates:
        if min_lsn is None or _caught_up(routing, state, alias, min_lsn):
            return alias
    return None


def _caught_up(routing: Routing, state: CausalState | None, alias: str, min_lsn: int) -> bool:
    """Whether ``alias`` has replayed ``min_lsn``.

    The monitor's last positions answer most of the time; a replica they
    show behind is asked once per context (one short query on the
    application's own connection to it), since it may have caught up since.
    """
    assert state is not None
    caught_up = state.checked.get(alias)
    if caught_up is None:
        positions = routing.monitor.replay_positions if routing.monitor is not None else {}
        caught_up = positions.get(alias, -1) >= min_lsn or _has_replayed(routing, alias, min_lsn)
        state.checked[alias] = caught_up
    return caught_up


def _has_replayed(routing: Routing, alias: str, min_lsn: int) -> bool:
    try:
        lsn = query_lsn(connections[alias], REPLAY_LSN)
    except Exception:  # a dead replica cannot serve it; the primary can
        logger.debug("replica_router: could not ask %s for its replay position", alias)
        return False
    if lsn is None:
        return False
    if routing.monitor is not None:
        routing.monitor.note_replay_position(alias, lsn)
    return lsn >= min_lsn


def _read_primary(routing: Routing) -> None:
    """Note that this context read from the primary: under monotonic reads its
    later reads stay there, since any replica may be older than what it saw."""
    if routing.monotonic_reads:
        state = causal_state.get()
        if state is not None:
            state.reading_from = routing.primary


def _no_replica(routing: Routing) -> str:
    """Where a read goes when no replica is in rotation: FALLBACK decides."""
    fallback = routing.config.fallback
    if fallback == "least_lagged" and routing.monitor is not None:
        alias = routing.monitor.snapshot.least_lagged()
        if alias is not None:
            return alias
    elif fallback == "error" and routing.replicas:
        raise NoReplicaAvailable(
            "No replica can serve this read and FALLBACK is 'error' "
            f"(replicas: {', '.join(sorted(routing.replicas))})."
        )
    return routing.primary


def alternative_for(alias: str) -> str:
    """Where a read routed to ``alias`` goes when ``alias`` cannot give a connection.

    Another replica in rotation, else what FALLBACK says (which may raise
    NoReplicaAvailable). A read bound by read-your-writes goes to the primary,
    the one node sure to have the write; so does one under monotonic reads or
    a staleness budget.
    """
    routing = runtime.current or runtime.load()
    state = causal_state.get()
    if state is not None and (
        (routing.read_your_writes and (state.wrote or state.pinned or state.min_lsn is not None))
        or (routing.monotonic_reads and state.reading_from is not None)
    ):
        # Another replica may be older than the write, or than what this
        # context has read already.
        if routing.monotonic_reads:
            state.reading_from = routing.primary
        return routing.primary
    if lag_budget() is not None:
        return routing.primary  # the budget was kept by the replica that failed
    for _ in range(len(routing.balancer.weights)):
        candidate = routing.balancer.pick()
        if candidate is None:
            break
        if candidate != alias:
            return candidate
    fallback = _no_replica(routing)
    return routing.primary if fallback == alias else fallback


class ReplicaRouter:
    """Send writes to the primary and spread reads over the replicas by weight.

    A read goes to the primary instead when it runs under ``use_primary``, inside
    ``transaction.atomic()`` on the primary (so it sees the transaction's own
    writes), for a model or app in ``PRIMARY_ONLY``, or when no replica is
    configured. Configure it with ``settings.REPLICA_ROUTER``; see docs/routing.md.
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        if hints and _outside(hints):
            return None
        routing = runtime.current or runtime.load()
        override = _get_read_override()  # True under use_primary, a float under max_lag
        if override is True:
            # use_primary() has moved a monotonic context to the primary already.
            if (counters := routing.counters) is not None:  # None with METRICS off
                counters.reads_use_primary()
            return routing.primary
        if model not in routing.replica_models and (
            routing.primary_only_models.get(model) or routing.is_primary_only(model)
        ):
            if (counters := routing.counters) is not None:
                counters.reads_primary_only()
            return routing.primary
        # Inside atomic() on the primary a read must see the transaction's own
        # writes. Looking costs a third of this method, so it is skipped while
        # no connection of the primary in the process has a transaction open
        # (see ``transactions``). Inlined rather than a helper: this runs on
        # every read.
        if transactions.open_count or not routing.counts_transactions:
            if _get_running_loop() is None:
                try:
                    wrapper = routing.local.primary
                except AttributeError:
                    wrapper = routing.thread_primary()
            else:
                # In an event loop thread Django keeps one wrapper per task
                # context, so the per-thread cache would be wrong; ask Django.
                wrapper = connections[routing.primary]
            if wrapper.in_atomic_block:
                if (counters := routing.counters) is not None:
                    counters.reads_in_transaction()
                _read_primary(routing)
                return routing.primary
        if routing.awaiting_monitor and not routing.start_monitor():
            if (counters := routing.counters) is not None:
                counters.read(routing.primary, "migrate")
            return routing.primary
        state = _get_causal_state()
        if state is not None and override is False:
            # The common case in a request, inlined: a read on from the replica
            # this context already reads from, still in rotation.
            node = state.reading_from
            if (
                node is not None
                and node in routing.balancer.rotation
                and not (routing.read_your_writes and (state.wrote or state.pinned))
            ):
                if (counters := routing.counters) is not None:
                    counters.reads_on_replica[node]()
                return node
        if state is not None or override is not False:
            node, reason = _route_in_context(routing, state, override or None)
            if (counters := routing.counters) is not None:
                counters.read(node, reason)
            return node
        alias = routing.balancer.pick()
        if alias is not None:
            if (counters := routing.counters) is not None:
                counters.reads_on_replica[alias]()
            return alias
        fallback = _no_replica(routing)
        if (counters := routing.counters) is not None:
            counters.read(fallback, "fallback" if routing.replicas else "no_replicas")
        return fallback

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        if hints and _outside(hints):
            return None
        routing = runtime.current or runtime.load()
        if routing.counters is not None:
            routing.counters.writes()
        return routing.primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # The primary and its replicas hold the same rows; any other pair is
        # Django's to judge (by default, objects on the same database).
        if role_of(obj1._state.db) is not None and role_of(obj2._state.db) is not None:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        role = role_of(db)
        if role is PRIMARY:
            return True
        if role is REPLICA:
            return False  # a replica gets its tables by replication
        return None


def _outside(hints: dict[str, Any]) -> bool:
    """Whether the ``instance`` hint's object lives on a database outside the cluster.

    Then Django decides, as it would with no router: it uses that database.
    """
    instance = hints.get("instance")
    if instance is None:
        return False
    db = getattr(getattr(instance, "_state", None), "db", None)
    return db is not None and role_of(db) is None
