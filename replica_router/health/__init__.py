"""Replica health, one module per concept:

* :mod:`~replica_router.health.model`: node states, probe results, the snapshot;
* :mod:`~replica_router.health.probe`: asking PostgreSQL (psycopg only);
* :mod:`~replica_router.health.policy`: judging nodes from probes (pure);
* :mod:`~replica_router.health.aliases`: what the monitor reads from ``DATABASES``;
* :mod:`~replica_router.health.monitor`: the thread that probes and publishes.

The model's names are re-exported here; importing this package loads no driver.
"""

from __future__ import annotations

from replica_router.health.model import OVERALL_CODES, NodeStatus, Probe, Snapshot, State

__all__ = ["OVERALL_CODES", "NodeStatus", "Probe", "Snapshot", "State"]
