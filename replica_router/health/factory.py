"""Which health monitor a configuration gets, and where a fleet shares its probing."""

from __future__ import annotations

from django.conf import settings

from replica_router.balancer import Balancer
from replica_router.conf import RouterConfig
from replica_router.discovery import Discovery
from replica_router.health.fleet import SharedMonitor
from replica_router.health.monitor import Monitor
from replica_router.health.sharing import Store, cluster_key, store_for

__all__ = ["health_store", "monitor_for"]


def health_store(config: RouterConfig) -> Store | None:
    """Where the processes of the site share the probing (HEALTH_SHARING), or None."""
    return store_for(
        config.health_sharing,
        key=cluster_key(
            settings.DATABASES[config.primary],
            {alias: settings.DATABASES[alias] for alias in config.replicas},
        ),
        cache=config.health_cache,
        directory=config.health_dir,
    )


def monitor_for(config: RouterConfig, balancer: Balancer, discovery: Discovery | None) -> Monitor:
    """A monitor of this process's own, or one that shares the probing with the
    other processes of the site."""
    store = health_store(config)
    if store is None:
        return Monitor(config=config, balancer=balancer, discovery=discovery)
    return SharedMonitor(
        config=config,
        balancer=balancer,
        store=store,
        mode=config.health_sharing,
        discovery=discovery,
    )
