"""Testing helpers: the local cluster, the pytest plugin, and real replica routing.

``replica_routing`` is imported on first use, so that loading the pytest
plugin imports nothing of Django's before pytest-django has configured it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replica_router.testing.routing import replica_routing

__all__ = ["replica_routing"]


def __getattr__(name: str) -> Any:
    if name == "replica_routing":
        from replica_router.testing.routing import replica_routing

        return replica_routing
    raise AttributeError(f"module 'replica_router.testing' has no attribute {name!r}")
