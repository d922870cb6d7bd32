"""A django-debug-toolbar panel: where each query of the request ran, and why.

Add it to the toolbar's panels (extra ``debug-toolbar``; docs/debug-toolbar.md)::

    from debug_toolbar.settings import PANELS_DEFAULTS

    DEBUG_TOOLBAR_PANELS = [
        *PANELS_DEFAULTS,
        "replica_router.contrib.debug_toolbar.ReplicaRoutingPanel",
    ]

For each SQL query it shows the alias the query ran on and the reason the
router sent it there (:data:`replica_router.trace.REASONS`), from a
:class:`~replica_router.trace.Trace` of the request; then each node's state
and lag in the health monitor's last snapshot of the request, and the
request's read-your-writes state: the pin cookie it came with, the causal
state its reads ran under, and the cookie its response sets.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from asgiref.sync import sync_to_async
from debug_toolbar.panels import Panel
from django.http import HttpRequest, HttpResponseBase

from replica_router import runtime
from replica_router.conf import get_config
from replica_router.context import CausalState
from replica_router.health.model import Snapshot
from replica_router.lsn import format_lsn
from replica_router.middleware import read_cookie
from replica_router.trace import Trace, TracedQuery, tracing

__all__ = ["ReplicaRoutingPanel"]

#: The SQL kept for a query; the table shows less, the tooltip this much.
_SQL_KEPT = 2000


class ReplicaRoutingPanel(Panel):
    """Shows the alias and the routing reason of each query of the request."""

    title = "Replica routing"
    template = "replica_router/debug_toolbar/routing.html"
    is_async = True  # the trace lives in context variables: ASGI works as WSGI does

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tracing: tracing | None = None
        self._trace: Trace | None = None
        self._snapshot: Snapshot | None = None
        self._monitor_state = "off"

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()  # type: ignore[no-untyped-call]  # the toolbar's API is untyped
        count = len(stats.get("queries", ()))
        noun = "query" if count == 1 else "queries"
        return f"{count} {noun}: {stats.get('on_replicas', 0)} on replicas"

    # -- instrumentation ---------------------------------------------------------

    def enable_instrumentation(self) -> None:
        if self._start():
            assert self._tracing is not None
            self._tracing.watch()

    async def aenable_instrumentation(self) -> None:
        if self._start():
            assert self._tracing is not None
            # Django's connections belong to the thread that runs sync code.
            await sync_to_async(self._tracing.watch)()

    def _start(self) -> bool:
        if self._tracing is not None:
            return False  # idempotent, as the toolbar asks
        self._tracing = tracing(watch=False)
        self._trace = self._tracing.start()
        return True

    def disable_instrumentation(self) -> None:
        if self._tracing is not None:
            self._tracing.stop()
        # The monitor starts at the request's first read of a replica, so its
        # snapshot is taken now rather than when the request came in.
        monitor = runtime.get_monitor()
        if monitor is not None:
            self._snapshot = monitor.snapshot
            self._monitor_state = "running" if monitor.running else "not started"

    # -- stats ---------------------------------------------------------------------

    def generate_stats(self, request: HttpRequest, response: HttpResponseBase) -> None:
        config = get_config()
        queries = self._trace.queries if self._trace is not None else []
        reasons = Counter(query.reason for query in queries)
        self.record_stats(  # type: ignore[no-untyped-call]
            {
                "queries": [_query_row(query) for query in queries],
                "on_replicas": sum(query.alias in config.replicas for query in queries),
                "reasons": sorted(reasons.items(), key=lambda item: (-item[1], item[0])),
                "primary": config.primary,
                "monitor": self._monitor_state,
                "snapshot_taken_at": (
                    self._snapshot.taken_at.isoformat() if self._snapshot is not None else None
                ),
                "nodes": _node_rows(self._snapshot),
                "pin": _pin_rows(request, response, self._trace),
                "failovers": [list(pair) for pair in self._trace.failovers] if self._trace else [],
                "conflicts": list(self._trace.conflicts) if self._trace else [],
            }
        )


def _query_row(query: TracedQuery) -> dict[str, Any]:
    # Plain values only: the toolbar keeps a panel's stats in its store as JSON.
    return {
        "index": query.index,
        "alias": query.alias,
        "reason": query.reason,
        "failover_from": query.failover_from,
        "routed_for": query.routed_for,
        "note": query.note,
        "sql": query.sql[:_SQL_KEPT],
        "ms": round(query.seconds * 1000, 2),
        "error": query.error,
        "many": query.many,
    }


def _node_rows(snapshot: Snapshot | None) -> list[dict[str, Any]]:
    if snapshot is None:
        return []
    return [
        {
            "alias": node.alias,
            "role": node.role,
            "state": str(node.state),
            "in_rotation": node.in_rotation,
            "weight": node.weight,
            "lag_seconds": None if node.lag_seconds is None else round(node.lag_seconds, 3),
            "lag_bytes": node.lag_bytes,
            "lsn": node.lsn_text,
            "why": node.reason,
        }
        for node in snapshot.nodes
    ]


def _pin_rows(
    request: HttpRequest, response: HttpResponseBase, trace: Trace | None
) -> list[list[str]]:
    """(what, value) rows about read-your-writes for this request."""
    config = get_config()
    name = config.cookie_name
    rows = [
        [
            "Mode",
            f"READ_YOUR_WRITES {config.read_your_writes!r}, MONOTONIC_READS "
            f"{config.monotonic_reads}, PIN_SECONDS {config.pin_seconds:g}",
        ],
    ]
    raw = request.COOKIES.get(name)
    if raw is None:
        came_with = "none"
    else:
        state = read_cookie(raw, config)
        came_with = (
            _describe(state)
            if state is not None
            else "ignored (expired, bad signature or malformed)"
        )
    rows.append([f"Pin cookie {name!r} sent", came_with])
    state = trace.state if trace is not None else None
    rows.append(["During the request", _describe_request(state)])
    morsel = response.cookies.get(name)
    if morsel is None:
        sets = "unchanged"
    elif not morsel.value or str(morsel["max-age"]) == "0":
        sets = "cleared: every replica in rotation has replayed the write"
    else:
        new = read_cookie(morsel.value, config)
        sets = (
            f"{_describe(new)} (for {morsel['max-age']} s)"
            if new is not None
            else "set (unreadable here)"
        )
    rows.append([f"Pin cookie {name!r} set by the response", sets])
    return rows


def _describe(state: CausalState | None) -> str:
    """A pin cookie's causal state in words."""
    if state is None:
        return "none"
    if state.pinned:
        return "pinned to the primary (a write less than PIN_SECONDS ago)"
    if state.min_lsn is not None:
        text = f"reads must see WAL position {format_lsn(state.min_lsn)}"
        if state.reading_from is not None:
            text += f", from {state.reading_from} (monotonic reads)"
        return text
    return "nothing to see"


def _describe_request(state: CausalState | None) -> str:
    if state is None:
        return "no causal state (no routed query, or PrimaryPinningMiddleware is not installed)"
    parts = []
    if state.wrote:
        parts.append("wrote on the primary: later reads are pinned there")
    if state.pinned:
        parts.append("pinned to the primary by time")
    if state.min_lsn is not None:
        parts.append(f"reads had to see WAL position {format_lsn(state.min_lsn)}")
    if state.checked:
        checked = ", ".join(
            f"{alias} {'has' if replayed else 'had not'} replayed it"
            for alias, replayed in sorted(state.checked.items())
        )
        parts.append(f"checked: {checked}")
    if state.reading_from is not None:
        parts.append(f"reads came from {state.reading_from} (monotonic reads)")
    return "; ".join(parts) or "no write, no pin"
