"""Count the reads each database alias serves, over the last few seconds.

This lives in the sample site, not in the library: it is what the /replicas/
page shows, and a demonstration that reads really are spread by weight. An
execute wrapper on every connection counts each SELECT that succeeds, under
the alias of the server that answered it: when the failover backend has
borrowed a connection to another node (``borrowed_from``), that node gets the
count. Counts are per process; the demo runs one gunicorn worker with threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

#: How far back "recent" reads go, in seconds.
WINDOW_SECONDS = 10

# The router's own questions about WAL positions are not reads of the site's data.
_ROUTING_QUERIES = ("pg_last_wal_replay_lsn", "pg_current_wal_insert_lsn")

_counting: ContextVar[bool] = ContextVar("bookshop.readstats.counting", default=True)


class ReadCounter:
    """Thread-safe per-alias counts: a total and a rolling window of 1 s buckets."""

    def __init__(
        self, *, window: int = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 second, got {window}")
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._totals: dict[str, int] = defaultdict(int)
        # alias -> deque of [second, count], oldest first.
        self._buckets: dict[str, deque[list[int]]] = defaultdict(deque)

    def record(self, alias: str) -> None:
        second = int(self._clock())
        with self._lock:
            self._totals[alias] += 1
            buckets = self._buckets[alias]
            if buckets and buckets[-1][0] == second:
                buckets[-1][1] += 1
            else:
                buckets.append([second, 1])
                while buckets[0][0] <= second - self.window:
                    buckets.popleft()

    def counts(self) -> dict[str, dict[str, int]]:
        """``{alias: {"recent": reads in the window, "total": reads since start}}``."""
        oldest = int(self._clock()) - self.window
        with self._lock:
            return {
                alias: {
                    "recent": sum(n for second, n in self._buckets[alias] if second > oldest),
                    "total": total,
                }
                for alias, total in self._totals.items()
            }


counter = ReadCounter()


def is_read(sql: object) -> bool:
    text = sql if isinstance(sql, str) else str(sql)
    head = text.lstrip(" \t\r\n(")[:6].upper()
    return head == "SELECT" and not any(q in text for q in _ROUTING_QUERIES)


def count_reads(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper: count a SELECT once it has succeeded."""
    result = execute(sql, params, many, context)
    if _counting.get() and is_read(sql):
        connection = context["connection"]
        # Read after execute: a broken read retried elsewhere borrows on the way.
        counter.record(getattr(connection, "borrowed_from", None) or connection.alias)
    return result


@contextlib.contextmanager
def not_counted() -> Iterator[None]:
    """Leave the reads of a block out of the counts (the status endpoint's own)."""
    token = _counting.set(False)
    try:
        yield
    finally:
        _counting.reset(token)


def _install_on(connection: Any, **kwargs: Any) -> None:
    # The wrapper list belongs to Django's connection object and survives
    # reconnects and pool checkouts: add the wrapper once.
    if count_reads not in connection.execute_wrappers:
        connection.execute_wrappers.append(count_reads)


def install() -> None:
    """Count reads on connections made from now on, and on those already made."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.connect(_install_on, dispatch_uid="bookshop.readstats")
    for connection in connections.all(initialized_only=True):
        _install_on(connection)
