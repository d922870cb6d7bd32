"""Exceptions raised by replica_router.

Each subclasses the Django exception that existing ``except`` clauses already
catch, so adopting the router does not change what an application must handle.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError

__all__ = ["NoReplicaAvailable", "ReplicaRouterConfigError"]


class NoReplicaAvailable(OperationalError):
    """No replica can serve this read and FALLBACK is 'error'."""


class ReplicaRouterConfigError(ImproperlyConfigured):
    """settings.REPLICA_ROUTER, or a URL given to replica_router.env, cannot be used as it is."""
