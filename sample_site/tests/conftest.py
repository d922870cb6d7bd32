from __future__ import annotations

import pytest
from django.db import connections


@pytest.fixture(scope="session", autouse=True)
def _quiet_before_test_databases_are_dropped(django_db_setup):
    """Stop the health monitor before the test database is dropped.

    Its probes connect to the test database, and PostgreSQL refuses to drop a
    database that has a session in it.
    """
    yield
    from replica_router.runtime import get_monitor

    monitor = get_monitor()
    if monitor is not None:
        monitor.stop()
    connections.close_all()
