"""The Django app: adding ``replica_router`` to INSTALLED_APPS enables its system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class ReplicaRouterConfig(AppConfig):
    name = "replica_router"
    verbose_name = "Replica router"

    def ready(self) -> None:
        from django.test.signals import setting_changed

        from replica_router import checks as router_checks
        from replica_router.conf import get_config
        from replica_router.exceptions import ReplicaRouterConfigError
        from replica_router.pinning import hook_write_detector

        for check in router_checks.ALL_CHECKS:
            checks.register(check, router_checks.TAG)
        # Read-your-writes needs to know when a request really writes.
        hook_write_detector()
        setting_changed.connect(hook_write_detector, dispatch_uid="replica_router.hook_writes")
        # With METRICS on, the metrics exist from startup, not from the first query.
        try:
            metrics_on = get_config().metrics
        except ReplicaRouterConfigError:  # the system checks report it
            metrics_on = False
        if metrics_on:
            from replica_router.metrics import register

            register()
