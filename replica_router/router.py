"""The DATABASE_ROUTERS class: writes go to the primary, reads to the replicas.

Django calls ``db_for_read`` for every query, so it does no I/O and no settings
lookups: everything it needs is in the process's
:class:`~replica_router.runtime.Routing`, built once from the config and rebuilt
when ``override_settings`` changes ``REPLICA_ROUTER`` or ``DATABASES``.
"""

from __future__ import annotations

import logging
from asyncio import _get_running_loop
from typing import TYPE_CHECKING, Any

from django.db import connections

from replica_router import runtime
from replica_router.context import CausalState, causal_state, forced_primary
from replica_router.exceptions import NoReplicaAvailable
from replica_router.lsn import REPLAY_LSN, query_lsn
from replica_router.runtime import Routing

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["ReplicaRouter", "alternative_for"]

logger = logging.getLogger("replica_router")


def _caught_up_replica(routing: Routing, state: CausalState) -> str:
    """A replica in rotation that has replayed ``state.min_lsn``, else the primary.

    The monitor's last positions answer most of the time; a replica they
    show behind is asked once per request (one short query on the
    application's own connection to it), since it may have caught up since.
    """
    min_lsn = state.min_lsn
    assert min_lsn is not None
    positions = routing.monitor.replay_positions if routing.monitor is not None else {}
    for _ in range(len(routing.balancer.weights)):
        alias = routing.balancer.pick()
        if alias is None:
            break
        caught_up = state.checked.get(alias)
        if caught_up is None:
            caught_up = positions.get(alias, -1) >= min_lsn or _has_replayed(
                routing, alias, min_lsn
            )
            state.checked[alias] = caught_up
        if caught_up:
            return alias
    return routing.primary


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
    the one node sure to have the write.
    """
    routing = runtime.current or runtime.load()
    state = causal_state.get()
    if (
        state is not None
        and routing.read_your_writes
        and (state.wrote or state.pinned or state.min_lsn is not None)
    ):
        return routing.primary
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
    configured. Configure it with ``settings.REPLICA_ROUTER``; see docs/router.md.
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        routing = runtime.current or runtime.load()
        counters = routing.counters  # None with METRICS off: then nothing is counted
        if forced_primary.get():
            if counters is not None:
                counters.reads_use_primary()
            return routing.primary
        primary_only = routing.primary_only_models.get(model)
        if primary_only is None:
            primary_only = routing.is_primary_only(model)
        if primary_only:
            if counters is not None:
                counters.reads_primary_only()
            return routing.primary
        # Inside atomic() on the primary a read must see the transaction's own
        # writes. Inlined rather than a helper: this runs on every read.
        if _get_running_loop() is None:
            try:
                wrapper = routing.local.primary
            except AttributeError:
                wrapper = routing.thread_primary()
        else:
            # In an event loop thread Django keeps one wrapper per task context,
            # so the per-thread cache would be wrong; ask Django.
            wrapper = connections[routing.primary]
        if wrapper.in_atomic_block:
            if counters is not None:
                counters.reads_in_transaction()
            return routing.primary
        if routing.awaiting_monitor and not routing.start_monitor():
            if counters is not None:
                counters.read(routing.primary, "migrate")
            return routing.primary
        state = causal_state.get()
        if state is not None and routing.read_your_writes:
            if state.wrote or state.pinned:
                if counters is not None:
                    counters.reads_pinned()
                return routing.primary
            if state.min_lsn is not None:
                caught_up = _caught_up_replica(routing, state)
                if counters is not None:
                    reason = "pinned" if caught_up == routing.primary else "replica"
                    counters.read(caught_up, reason)
                return caught_up
        alias = routing.balancer.pick()
        if alias is not None:
            if counters is not None:
                counters.reads_on_replica[alias]()
            return alias
        fallback = _no_replica(routing)
        if counters is not None:
            counters.read(fallback, "fallback" if routing.replicas else "no_replicas")
        return fallback

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        routing = runtime.current or runtime.load()
        if routing.counters is not None:
            routing.counters.writes()
        return routing.primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        aliases = (runtime.current or runtime.load()).aliases
        if obj1._state.db in aliases and obj2._state.db in aliases:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        routing = runtime.current or runtime.load()
        if db == routing.primary:
            return True
        if db in routing.replicas:
            return False
        return None
