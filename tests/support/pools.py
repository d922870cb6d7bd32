"""Closing Django's connection pools between tests, through Django's own API."""

from __future__ import annotations

from django.db import connections

from replica_router.backends.postgresql import pools


def close_pools() -> None:
    """Close every alias's pool, once the closes the failover engine started are done.

    Django makes a new pool on the next use, connected to the servers as they are now.
    """
    for thread in pools.closing():
        thread.join()
    for alias in connections:
        close_pool = getattr(connections[alias], "close_pool", None)
        if close_pool is not None:
            close_pool()
