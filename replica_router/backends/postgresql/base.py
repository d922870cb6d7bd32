"""Django's PostgreSQL backend, plus one thing: a replica that refuses a
connection is taken out of rotation at once, without waiting for the next probe.

Use it as ``"ENGINE": "replica_router.backends.postgresql"`` on every alias the
router manages; ``replica_router.env.database_settings()`` does so by default.
It behaves exactly like ``django.db.backends.postgresql`` otherwise.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db.backends.postgresql import base

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        try:
            return super().get_new_connection(conn_params)
        except psycopg.Error as exc:  # refused, reset, timed out, PoolTimeout
            _report_failure(self.alias, exc)
            raise


def _report_failure(alias: str, exc: BaseException) -> None:
    from replica_router.router import get_monitor

    monitor = get_monitor()
    if monitor is not None:
        monitor.report_failure(alias, exc)
