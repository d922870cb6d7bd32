"""The Django app: adding ``replica_router`` to INSTALLED_APPS enables its system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class ReplicaRouterConfig(AppConfig):
    name = "replica_router"
    verbose_name = "Replica router"

    def ready(self) -> None:
        # runtime connects the one receiver that resets everything built from
        # the settings; importing it here connects it before any test changes them.
        from replica_router import checks as router_checks
        from replica_router import runtime
        from replica_router.conf import get_config
        from replica_router.exceptions import ReplicaRouterConfigError
        from replica_router.writes import hook_write_detector

        for check in router_checks.ALL_CHECKS:
            checks.register(check, router_checks.TAG)
        # Read-your-writes needs to know when a request really writes.
        hook_write_detector()
        # With METRICS on, the metrics exist from startup, not from the first query.
        try:
            metrics_on = get_config().metrics
        except ReplicaRouterConfigError:  # the system checks report it
            metrics_on = False
        if metrics_on:
            runtime.register_metrics()
