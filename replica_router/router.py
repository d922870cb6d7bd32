"""The DATABASE_ROUTERS class: writes go to the primary, reads to the replicas.

Django calls ``db_for_read`` for every query, so it does no I/O and no settings
lookups: everything it needs is in a :class:`_Routing` built once from the config
and rebuilt when ``override_settings`` changes ``REPLICA_ROUTER`` or ``DATABASES``.
"""

from __future__ import annotations

import logging
import os
import threading
from asyncio import _get_running_loop
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate

from replica_router.balancer import Balancer
from replica_router.conf import WATCHED_SETTINGS, RouterConfig, get_config
from replica_router.exceptions import NoReplicaAvailable
from replica_router.health import Monitor
from replica_router.pinning import CausalState, _causal, _forced

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Model

    from replica_router.metrics import Counters

__all__ = ["ReplicaRouter", "alternative_for", "get_balancer", "get_counters", "get_monitor"]

logger = logging.getLogger("replica_router")


class _Routing:
    """Everything the router needs, derived once from a :class:`RouterConfig`."""

    __slots__ = (
        "aliases",
        "balancer",
        "config",
        "counters",
        "local",
        "monitor",
        "monitoring",
        "primary",
        "primary_only",
        "read_your_writes",
        "replicas",
    )

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.primary = config.primary
        self.replicas = frozenset(config.replicas)
        self.aliases = self.replicas | {config.primary}
        # The seam for the health monitor: it calls set_weights() on this balancer
        # with the weights of the replicas it finds fit to serve reads.
        self.balancer = Balancer(weights=config.replicas)
        # Started by the first read that would go to a replica, never at import
        # or during migrate; until then ``monitoring`` is False.
        self.monitor = (
            Monitor(config=config, balancer=self.balancer)
            if config.health_checks and self.replicas
            else None
        )
        self.monitoring = self.monitor is None
        self.read_your_writes = config.read_your_writes != "off"
        # None unless METRICS is on, so that without metrics counting costs
        # nothing; metrics.py is imported only when it is on.
        self.counters: Counters | None = None
        if config.metrics:
            from replica_router.metrics import counters_for

            self.counters = counters_for(config)
        # model class -> True if its reads must go to the primary. Filled lazily;
        # a racing double fill writes the same value.
        self.primary_only: dict[type[Model], bool] = {}
        # A per-thread cache of this thread's primary connection wrapper, so the
        # in-transaction check skips the costly ``connections[alias]`` lookup.
        # This is not request state (that lives in context variables): Django
        # binds each wrapper to the thread that created it, and a threading.local
        # drops the entry when the thread ends, as Django's own storage does.
        self.local = threading.local()

    def is_primary_only(self, model: type[Model]) -> bool:
        """Decide, and cache, whether PRIMARY_ONLY covers ``model``."""
        labels = self.config.primary_only
        if not hasattr(model, "_meta"):  # not a model class; nothing to match
            return False
        meta = model._meta
        owners = [meta]
        if meta.concrete_model is not None:  # a proxy follows its concrete model
            owners.append(meta.concrete_model._meta)
        if isinstance(meta.auto_created, type):
            # The table behind a ManyToManyField follows the model that declares it.
            owners.append(meta.auto_created._meta)
        decision = any(
            owner.app_label.lower() in labels or owner.label_lower in labels for owner in owners
        )
        self.primary_only[model] = decision
        return decision

    def thread_primary(self) -> BaseDatabaseWrapper:
        """This thread's wrapper for the primary, cached in ``self.local``."""
        # Creating the wrapper does not connect; Django would create it anyway.
        wrapper: BaseDatabaseWrapper = connections[self.primary]
        self.local.primary = wrapper
        return wrapper

    def start_monitor(self) -> bool:
        """Start health monitoring; False while migrate runs (read from the primary)."""
        if _migrating:
            return False
        assert self.monitor is not None
        self.monitor.start(wait=True)
        self.monitoring = True
        return True

    def replica_with(self, state: CausalState) -> str:
        """A replica in rotation that has replayed ``state.token``, else the primary.

        The monitor's last positions answer most of the time; a replica they
        show behind is asked once per request (one short query on the
        application's own connection to it), since it may have caught up since.
        """
        token = state.token
        assert token is not None
        positions = self.monitor.replay_positions if self.monitor is not None else {}
        for _ in range(len(self.balancer.weights)):
            alias = self.balancer.pick()
            if alias is None:
                break
            caught_up = state.checked.get(alias)
            if caught_up is None:
                caught_up = positions.get(alias, -1) >= token or self._replayed(alias, token)
                state.checked[alias] = caught_up
            if caught_up:
                return alias
        return self.primary

    def _replayed(self, alias: str, token: int) -> bool:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint")
                row = cursor.fetchone()
        except Exception:  # a dead replica cannot serve it; the primary can
            logger.debug("replica_router: could not ask %s for its replay position", alias)
            return False
        if row is None or row[0] is None:
            return False
        lsn = int(row[0])
        if self.monitor is not None:
            self.monitor.note_replay_position(alias, lsn)
        return lsn >= token

    def no_replica(self) -> str:
        """Where a read goes when no replica is in rotation: FALLBACK decides."""
        fallback = self.config.fallback
        if fallback == "least_lagged" and self.monitor is not None:
            alias = self.monitor.snapshot.least_lagged()
            if alias is not None:
                return alias
        elif fallback == "error" and self.replicas:
            raise NoReplicaAvailable(
                "No replica can serve this read and FALLBACK is 'error' "
                f"(replicas: {', '.join(sorted(self.replicas))})."
            )
        return self.primary


_routing: _Routing | None = None
_routing_lock = threading.Lock()


def _current_routing() -> _Routing:
    global _routing
    with _routing_lock:
        if _routing is None:
            _routing = _Routing(get_config())
        return _routing


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    global _routing
    if setting in WATCHED_SETTINGS:
        with _routing_lock:
            old, _routing = _routing, None
        if old is not None and old.monitor is not None:
            old.monitor.stop()


# Reads during migrate stay on the primary, and the monitor is not started by
# them: the test runner migrates before the test databases are fully set up.
_migrating = False


def _on_pre_migrate(**kwargs: object) -> None:
    global _migrating
    _migrating = True


def _on_post_migrate(**kwargs: object) -> None:
    global _migrating
    _migrating = False


def _after_fork_in_child() -> None:
    # Threads do not survive fork(): a monitor started in a preloading parent
    # (gunicorn --preload) must start again in each worker.
    routing = _routing
    if routing is not None and routing.monitor is not None:
        routing.monitoring = False


pre_migrate.connect(_on_pre_migrate, dispatch_uid="replica_router.router.pre_migrate")
post_migrate.connect(_on_post_migrate, dispatch_uid="replica_router.router.post_migrate")
os.register_at_fork(after_in_child=_after_fork_in_child)


setting_changed.connect(_on_setting_changed, dispatch_uid="replica_router.router")


def alternative_for(alias: str) -> str:
    """Where a read routed to ``alias`` goes when ``alias`` cannot give a connection.

    Another replica in rotation, else what FALLBACK says (which may raise
    NoReplicaAvailable). A read bound by read-your-writes goes to the primary,
    the one node sure to have the write.
    """
    routing = _current_routing()
    state = _causal.get()
    if (
        state is not None
        and routing.read_your_writes
        and (state.wrote or state.pinned or state.token is not None)
    ):
        return routing.primary
    for _ in range(len(routing.balancer.weights)):
        candidate = routing.balancer.pick()
        if candidate is None:
            break
        if candidate != alias:
            return candidate
    fallback = routing.no_replica()
    return routing.primary if fallback == alias else fallback


def get_monitor() -> Monitor | None:
    """The health monitor of the current settings (None with HEALTH_CHECKS off
    or no replicas). It may not be started yet."""
    return (_routing or _current_routing()).monitor


def get_counters() -> Counters | None:
    """The metrics counters of the current settings (None with METRICS off)."""
    return (_routing or _current_routing()).counters


def get_balancer() -> Balancer:
    """The balancer the router picks replicas from (for the health monitor).

    Ask again rather than keeping it: a change of settings replaces it.
    """
    return (_routing or _current_routing()).balancer


class ReplicaRouter:
    """Send writes to the primary and spread reads over the replicas by weight.

    A read goes to the primary instead when it runs under ``use_primary``, inside
    ``transaction.atomic()`` on the primary (so it sees the transaction's own
    writes), for a model or app in ``PRIMARY_ONLY``, or when no replica is
    configured. Configure it with ``settings.REPLICA_ROUTER``; see docs/router.md.
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        routing = _routing or _current_routing()
        counters = routing.counters  # None with METRICS off: then nothing is counted
        if _forced.get():
            if counters is not None:
                counters.use_primary()
            return routing.primary
        primary_only = routing.primary_only.get(model)
        if primary_only is None:
            primary_only = routing.is_primary_only(model)
        if primary_only:
            if counters is not None:
                counters.primary_only()
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
                counters.transaction()
            return routing.primary
        if not routing.monitoring and not routing.start_monitor():
            if counters is not None:
                counters.read(routing.primary, "migrate")
            return routing.primary
        state = _causal.get()
        if state is not None and routing.read_your_writes:
            if state.wrote or state.pinned:
                if counters is not None:
                    counters.pinned()
                return routing.primary
            if state.token is not None:
                caught_up = routing.replica_with(state)
                if counters is not None:
                    reason = "pinned" if caught_up == routing.primary else "replica"
                    counters.read(caught_up, reason)
                return caught_up
        alias = routing.balancer.pick()
        if alias is not None:
            if counters is not None:
                counters.replica[alias]()
            return alias
        fallback = routing.no_replica()
        if counters is not None:
            counters.read(fallback, "fallback" if routing.replicas else "no_replicas")
        return fallback

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        routing = _routing or _current_routing()
        if routing.counters is not None:
            routing.counters.write()
        return routing.primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        aliases = (_routing or _current_routing()).aliases
        if obj1._state.db in aliases and obj2._state.db in aliases:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        routing = _routing or _current_routing()
        if db == routing.primary:
            return True
        if db in routing.replicas:
            return False
        return None
