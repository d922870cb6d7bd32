"""Two views for the fleet harness: ``/state/`` (this worker's view of the
fleet's health) and ``/read/`` (one ORM read, routed as usual)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque

from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.urls import path

from replica_router.runtime import get_balancer, get_monitor
from replica_router.signals import replica_state_changed
from testbed.testapp.models import Author

#: (wall-clock time, alias, old state, new state) of this worker's transitions.
_changes: deque[tuple[float, str, str, str]] = deque(maxlen=500)
_lock = threading.Lock()


def _record(sender, alias, old_state, new_state, reason, **kwargs):
    with _lock:
        _changes.append((time.time(), alias, old_state, new_state))


replica_state_changed.connect(_record, weak=False, dispatch_uid="testbed.fleet_site.record")


def state(request: HttpRequest) -> JsonResponse:
    # No ORM read here: a read to a dead replica would report it (the
    # failover path), and the harness measures what the monitor does alone.
    monitor = get_monitor()
    assert monitor is not None
    if not monitor.running:
        monitor.start(wait=True)
    sharing = monitor.snapshot.sharing
    shared = {} if sharing is None else sharing.as_dict(topology=True)
    with _lock:
        changes = list(_changes)
    return JsonResponse(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "mode": shared.get("mode", "process"),
            "probing_here": shared.get("probing_here", True),
            "fallback": shared.get("fallback", False),
            "prober": shared.get("prober"),
            "lease_since": None if sharing is None else sharing.lease_since,
            "lease_age_seconds": shared.get("lease_age_seconds"),
            "snapshot_age_seconds": shared.get("snapshot_age_seconds"),
            "rotation": sorted(get_balancer().rotation),
            "changes": changes,
            "now": time.time(),
        }
    )


def read(request: HttpRequest) -> JsonResponse:
    """``db``: the alias the router chose; ``server``: whose server answered
    (another one's when the read failed over); ``at``: when the view began,
    before the router chose."""
    at = time.time()
    author = Author.objects.order_by("pk").first()
    db = author._state.db if author else None
    server = (getattr(connections[db], "borrowed_from", None) or db) if db else None
    return JsonResponse({"pid": os.getpid(), "db": db, "server": server, "at": at})


urlpatterns = [path("state/", state), path("read/", read)]
