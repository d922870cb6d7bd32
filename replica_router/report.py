"""What ``manage.py replica_health`` and the health view report about a snapshot.

Both serve :meth:`Snapshot.as_dict <replica_router.health.model.Snapshot.as_dict>`;
with topology, each node also gets ``pool``: the statistics of the psycopg pool
that Django keeps for that alias in *this* process, or None when the alias is
not pooled. Reading them is an in-memory lookup; it never opens a connection.
The schema is documented in docs/replica-health.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replica_router.health.model import Snapshot

__all__ = ["POOL_FIELDS", "health_document", "pool_stats"]

#: The keys of a node's ``pool`` object, from psycopg_pool's ``get_stats()`` keys.
POOL_FIELDS = {"size": "pool_size", "idle": "pool_available", "waiting": "requests_waiting"}


def pool_stats(alias: str) -> dict[str, int] | None:
    """``{"size", "idle", "waiting"}`` of this process's pool for ``alias``, or None.

    ``size`` is every connection the pool holds (in use or not), ``idle`` those
    ready to be handed out, ``waiting`` the requests queued for a connection.
    None when the alias is not pooled.
    """
    from django.db import connections

    try:
        pool = getattr(connections[alias], "pool", None)  # Django's pool, Django 5.1+
        stats: Mapping[str, int] = {} if pool is None else pool.get_stats()
    except Exception:  # misconfigured, or a pool being closed by another thread
        return None
    if pool is None:
        return None
    return {field: int(stats.get(key, 0)) for field, key in POOL_FIELDS.items()}


def health_document(snapshot: Snapshot, *, topology: bool) -> dict[str, Any]:
    """The JSON document for ``snapshot``; ``topology`` adds hosts, errors and pools."""
    document = snapshot.as_dict(topology=topology)
    if topology:
        for node in document["nodes"]:
            node["pool"] = pool_stats(node["alias"])
    return document
