"""The Django app: adding ``replica_router`` to INSTALLED_APPS enables its system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class ReplicaRouterConfig(AppConfig):
    name = "replica_router"
    verbose_name = "Replica router"

    def ready(self) -> None:
        from replica_router import checks as router_checks

        for check in router_checks.ALL_CHECKS:
            checks.register(check, router_checks.TAG)
