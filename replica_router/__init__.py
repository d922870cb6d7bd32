"""Route Django reads to PostgreSQL replicas.

The names below are the public API. They are imported on first use, so that
listing ``replica_router`` in INSTALLED_APPS imports nothing from ``django.db``
before the app registry is ready.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replica_router.context import causal, current_token, max_lag, use_primary
    from replica_router.exceptions import NoReplicaAvailable
    from replica_router.router import ReplicaRouter
    from replica_router.runtime import reset_state

__all__ = [
    "NoReplicaAvailable",
    "ReplicaRouter",
    "causal",
    "current_token",
    "max_lag",
    "reset_state",
    "use_primary",
]

_LAZY = {
    "NoReplicaAvailable": "replica_router.exceptions",
    "ReplicaRouter": "replica_router.router",
    "use_primary": "replica_router.context",
    "causal": "replica_router.context",
    "current_token": "replica_router.context",
    "max_lag": "replica_router.context",
    "reset_state": "replica_router.runtime",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'replica_router' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
