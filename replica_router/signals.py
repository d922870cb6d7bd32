"""Signals sent by replica_router.

``replica_state_changed(sender, alias, old_state, new_state, reason)``
    Sent by the health monitor each time a node changes state. ``sender`` is
    :class:`replica_router.health.monitor.Monitor`; the states are the strings
    ``"unknown"``, ``"healthy"``, ``"lagging"``, ``"down"`` and ``"ejected"``;
    ``reason`` says why, in words (never a password). Receivers run in the
    monitor's thread, or in the thread whose failed connection took the replica
    down, so keep them quick.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["replica_state_changed"]

replica_state_changed = Signal()
