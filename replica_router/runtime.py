"""Process-wide state: the current routing, the migrate flag, and what resets them.

Django keeps one ``ConnectionRouter`` per process; the router likewise keeps one
:class:`Routing`, built from the settings on first use: the balancer, the health
monitor, the metrics counters and the caches that keep ``db_for_read`` free of
I/O and settings lookups.

One ``setting_changed`` receiver (:func:`reset`) clears all of it when
``REPLICA_ROUTER`` or ``DATABASES`` change, in a fixed order: the parsed config,
each alias's role, the routing (its monitor is stopped), and last the write
detector, which reads the new config. :func:`reset_state` does the same on
demand, and also ends a migrate that raised.

One at-fork hook (:func:`_after_fork_in_child`) is the whole of the package's
fork safety: it tells each object that holds threads or sockets (the health
monitors, their probers and probe connections, the shared store's thread, the
connection registry of the cut-off, the pools being closed) that it is now in
a child, through their ``after_fork()`` or ``forget()``. Nothing else in the
package compares process ids.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from django.core.signals import request_started, setting_changed
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate

from replica_router import cutoff
from replica_router.backends.postgresql import pools
from replica_router.balancer import Balancer
from replica_router.conf import WATCHED_SETTINGS, RouterConfig, engine_flag, get_config
from replica_router.discovery import Discovery
from replica_router.health.factory import monitor_for
from replica_router.health.monitor import Monitor, live_monitors
from replica_router.health.policy import probe_gap
from replica_router.writes import hook_write_detector

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Model

    from replica_router.health.model import Snapshot
    from replica_router.metrics import Counters, ReplicaRouterCollector

__all__ = [
    "PRIMARY",
    "REPLICA",
    "Routing",
    "current",
    "get_balancer",
    "get_counters",
    "get_monitor",
    "load",
    "note_test_database",
    "register_metrics",
    "release_test_databases",
    "reset",
    "reset_state",
    "role_of",
    "route_test_mirrors",
    "serving_tests",
    "set_route_test_mirrors",
]

PRIMARY: Final = "primary"
REPLICA: Final = "replica"

logger = logging.getLogger("replica_router")


class Routing:
    """Everything the router needs, derived once from a :class:`RouterConfig`."""

    __slots__ = (
        "aliases",
        "awaiting_monitor",
        "balancer",
        "config",
        "counters",
        "counts_transactions",
        "local",
        "monitor",
        "monotonic_reads",
        "primary",
        "primary_only_models",
        "replica_models",
        "probe_gap",
        "read_your_writes",
        "replicas",
    )

    def __init__(self, config: RouterConfig) -> None:
        config = _without_test_mirrors(config)
        self.config = config
        self.primary = config.primary
        self.replicas = frozenset(config.replicas)
        self.aliases = self.replicas | {config.primary}
        # The seam for the health monitor: it calls set_weights() on this balancer
        # with the weights of the replicas it finds fit to serve reads.
        self.balancer = Balancer(weights=config.replicas)
        discovery = _discovery_for(config)
        self.monitor = (
            monitor_for(config, self.balancer, discovery)
            if config.health_checks and (self.replicas or discovery)
            else None
        )
        if self.monitor is not None:
            self.monitor.on_replicas = self._follow
        # The first read that would go to a replica starts the monitor, never
        # an import or migrate; until then this is True. A migrate sets it
        # again, so that its reads stay on the primary, health checks or not.
        self.awaiting_monitor = self.monitor is not None or migrating
        self.read_your_writes = config.read_your_writes != "off"
        self.monotonic_reads = config.monotonic_reads
        #: The longest wait between two verdicts on a replica (max_lag budgets).
        self.probe_gap = probe_gap(config)
        # None unless METRICS is on, so that without metrics counting costs nothing.
        self.counters: Counters | None = None
        if config.metrics:
            from replica_router import metrics  # needs the metrics extra

            register_metrics()
            self.counters = metrics.Counters(primary=config.primary, replicas=config.replicas)
        #: Model class -> True if its reads must go to the primary. Filled
        #: lazily; a racing double fill writes the same value.
        self.primary_only_models: dict[type[Model], bool] = {}
        #: The models found not PRIMARY_ONLY: asked on every read, and a set
        #: lookup is cheaper than a dict.get() call.
        self.replica_models: set[type[Model]] = set()
        # A per-thread cache of this thread's primary connection wrapper, so the
        # in-transaction check skips the costly ``connections[alias]`` lookup.
        # This is not request state (that lives in context variables): Django
        # binds each wrapper to the thread that created it, and a threading.local
        # drops the entry when the thread ends, as Django's own storage does.
        self.local = threading.local()
        #: Whether the primary's engine counts its open transactions (see
        #: ``transactions``); if not, every read looks at the primary's wrapper.
        self.counts_transactions = engine_flag(config.primary, "counts_transactions")

    def _follow(self, weights: Mapping[str, int]) -> None:
        """Discovery changed the replicas (told by the monitor, from its thread)."""
        self.config = dataclasses.replace(self.config, replicas=MappingProxyType(dict(weights)))
        self.replicas = frozenset(weights)
        self.aliases = self.replicas | {self.primary}
        role_of.cache_clear()

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
        self.primary_only_models[model] = decision
        if not decision:
            self.replica_models.add(model)
        return decision

    def thread_primary(self) -> BaseDatabaseWrapper:
        """This thread's wrapper for the primary, cached in ``self.local``."""
        # Creating the wrapper does not connect; Django would create it anyway.
        wrapper: BaseDatabaseWrapper = connections[self.primary]
        self.local.primary = wrapper
        return wrapper

    def start_monitor(self) -> bool:
        """Start health monitoring; False while migrate runs (read from the primary)."""
        if migrating:
            return False
        if self.monitor is not None:
            self.monitor.start(wait=True)
        self.awaiting_monitor = False
        return True


def _discovery_for(config: RouterConfig) -> Discovery | None:
    """Replica discovery, if DISCOVERY is set and health checks are on (the
    monitor's thread follows it). Under a test it serves only a test that asks
    for real routing (see :func:`_without_test_mirrors`)."""
    if config.discovery is None or not config.health_checks:
        return None
    if serving_tests and not route_test_mirrors:
        return None
    return Discovery(config.discovery, primary=config.primary, static=config.replicas)


def _without_test_mirrors(config: RouterConfig) -> RouterConfig:
    """``config`` less the replicas that serve a test through the primary's connection.

    Once Django's test set-up has created the primary's test database, a
    replica serves reads only if the set-up pointed it at that database
    (``set_as_test_mirror``; it skips the aliases no test lists) and the test
    asks for real routing (:func:`replica_router.testing.replica_routing`).
    Otherwise its reads go to the primary: a test sees its own data, inside
    ``TestCase``'s transaction too, and needs no replica alias in ``databases``.
    Outside tests this returns ``config`` itself.
    """
    if not serving_tests:
        return config
    replicas = {
        alias: weight
        for alias, weight in config.replicas.items()
        if route_test_mirrors and alias in test_mirrors
    }
    return dataclasses.replace(config, replicas=replicas)


#: The routing of the current settings; None until first use and after a change.
#: The router reads it on every query: ``runtime.current or runtime.load()``.
current: Routing | None = None
_lock = threading.Lock()

#: True while migrate runs: reads stay on the primary and do not start the
#: monitor (the test runner migrates before the test databases are fully set up).
#: Set by ``pre_migrate``, cleared by ``post_migrate``; a migrate that raises
#: sends no ``post_migrate``, so the next request and :func:`reset_state` clear
#: it too.
migrating = False

#: True from the creation of the primary's test database by Django's test
#: set-up to its destruction. See :func:`_without_test_mirrors`.
serving_tests = False
#: The replicas that the test set-up pointed at the primary's test database.
test_mirrors: set[str] = set()
#: True while a test asks for real replica routing of those replicas.
route_test_mirrors = False


def note_test_database(*, mirror: str | None = None) -> None:
    """Django's test set-up created the primary's test database, or pointed
    the replica ``mirror`` at it."""
    global serving_tests
    with _lock:
        serving_tests = True
        if mirror is not None:
            test_mirrors.add(mirror)
    _drop_routing()


def set_route_test_mirrors(enabled: bool) -> bool:
    """Route mirrored replicas as real replicas (True) or through the primary;
    returns the previous value. See :func:`replica_router.testing.replica_routing`."""
    global route_test_mirrors
    with _lock:
        previous, route_test_mirrors = route_test_mirrors, enabled
    if previous != enabled and serving_tests:
        _drop_routing()
    return previous


def release_test_databases() -> None:
    """Leave no session of the router's on a test database, so it can be dropped.

    Stops the health monitor (its probes are connected to the test database)
    and closes this thread's connections and every pool of the router's
    aliases. The test run is over: the next read builds the routing again,
    from the settings alone.
    """
    global serving_tests
    with _lock:
        serving_tests = False
        test_mirrors.clear()
    _drop_routing()
    try:
        config = get_config()
    except Exception:  # misconfigured: nothing of ours was connected
        return
    for alias in (config.primary, *config.replicas):
        if alias in connections:
            connection = connections[alias]
            connection.close()
            close_pool = getattr(connection, "close_pool", None)
            if close_pool is not None:  # Django's pool, Django 5.1+
                close_pool()


def load() -> Routing:
    """The current routing, built from the settings if there is none."""
    global current
    with _lock:
        if current is None:
            current = Routing(get_config())
        return current


def get_monitor() -> Monitor | None:
    """The health monitor of the current settings (None with HEALTH_CHECKS off
    or no replicas). It may not be started yet."""
    return (current or load()).monitor


def get_counters() -> Counters | None:
    """The metrics counters of the current settings (None with METRICS off)."""
    return (current or load()).counters


def get_balancer() -> Balancer:
    """The balancer the router picks replicas from.

    Ask again rather than keeping it: a change of settings replaces it.
    """
    return (current or load()).balancer


def _current_snapshot() -> Snapshot | None:
    monitor = get_monitor()
    return None if monitor is None else monitor.snapshot


def register_metrics() -> ReplicaRouterCollector:
    """Register the Prometheus collector (once per process); needs the metrics extra."""
    from replica_router.metrics import register

    return register(snapshot=_current_snapshot)


# Asked on every checkout and every cursor by the failover engine, so cached.
@functools.cache
def role_of(alias: str) -> str | None:
    """:data:`PRIMARY`, :data:`REPLICA` or None: what the router makes of an alias."""
    try:
        config = get_config()
    except Exception:  # misconfigured: the system checks say so
        return None
    if alias == config.primary:
        return PRIMARY
    routing = current
    discovered = routing is not None and alias in routing.replicas
    return REPLICA if alias in config.replicas or discovered else None


def _drop_routing() -> None:
    """Forget the current routing and stop its monitor; the next read builds one."""
    global current
    with _lock:
        old, current = current, None
    if old is not None and old.monitor is not None:
        old.monitor.stop()
        if old.monitor.discovery is not None:
            old.monitor.discovery.stop()


def reset_state() -> None:
    """Forget the router's state in this process; the next read builds it again
    from the settings.

    Clears the parsed config and each alias's role, drops the routing (its
    health monitor is stopped), hooks the write detector up again, and ends a
    migrate that raised (reads stay on the primary while one runs).
    """
    global migrating
    migrating = False
    _forget_settings()


def _forget_settings() -> None:
    """Forget what was built from the settings, in dependency order."""
    get_config.cache_clear()
    role_of.cache_clear()
    _drop_routing()
    hook_write_detector()


def reset(*, setting: str, **kwargs: Any) -> None:
    """The ``setting_changed`` receiver: forget everything built from the settings.

    Unlike :func:`reset_state`, it leaves the migrate flag alone: settings
    may change while a migrate runs.
    """
    if setting not in WATCHED_SETTINGS:
        return
    _forget_settings()


def _on_pre_migrate(**kwargs: object) -> None:
    global migrating
    migrating = True
    routing = current
    if routing is not None:  # built before: its reads go by the monitor's gate
        routing.awaiting_monitor = True


def _on_post_migrate(**kwargs: object) -> None:
    global migrating
    migrating = False


def _on_request_started(**kwargs: object) -> None:
    # A request never runs inside migrate: a migrate that raised (and so sent
    # no post_migrate) must not keep this process's reads on the primary.
    global migrating
    if migrating:
        migrating = False


def _after_fork_in_child() -> None:
    """The package's one at-fork hook: in the child, the parent's threads are
    gone and the sockets it inherited are the parent's."""
    cutoff.registry.forget()
    pools.forget()
    for monitor in live_monitors():
        try:
            monitor.after_fork()
        except Exception:  # the child must run on; its monitor only degrades
            logger.exception("replica_router: resetting a health monitor after fork failed")
    # A monitor started in a preloading parent (gunicorn --preload) starts
    # again, in each worker, on its first routed read.
    routing = current
    if routing is not None and routing.monitor is not None:
        routing.awaiting_monitor = True


setting_changed.connect(reset, dispatch_uid="replica_router.runtime.reset")
pre_migrate.connect(_on_pre_migrate, dispatch_uid="replica_router.runtime.pre_migrate")
post_migrate.connect(_on_post_migrate, dispatch_uid="replica_router.runtime.post_migrate")
request_started.connect(_on_request_started, dispatch_uid="replica_router.runtime.request")
os.register_at_fork(after_in_child=_after_fork_in_child)
