"""Closing a down replica's connection pool, off the thread that found it down.

Closing a pool wakes every thread waiting in it for a connection (they get
``PoolClosed`` and fail over at once instead of sitting out the pool timeout),
stops its attempts to reconnect to a dead server, and discards its connections
to that server, which would all be broken when it comes back. Django makes a
new pool on the next use.

Closing takes the pool's lock, which a thread handing out a connection may
hold, and Django's ``close_pool()`` joins the pool's worker threads: a request
thread, or the health monitor's, must wait for neither. So each close runs in
a short-lived thread of its own, at most one per alias at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import connections

__all__ = ["close_pool_soon", "closing", "closing_aliases", "forget"]

logger = logging.getLogger("replica_router")

_lock = threading.Lock()
_closing: dict[str, threading.Thread] = {}


def close_pool_soon(alias: str, then: Callable[[], None] | None = None) -> None:
    """Close ``alias``'s pool, if it has one, in the background; ``then`` runs
    once it is closed."""
    if not connections.settings[alias].get("OPTIONS", {}).get("pool"):
        return
    with _lock:
        if alias in _closing:
            return
        thread = threading.Thread(
            target=_close, args=(alias, then), name=f"replica-router-close-{alias}", daemon=True
        )
        _closing[alias] = thread
    thread.start()


def closing() -> list[threading.Thread]:
    """The closes still running (tests wait for them)."""
    with _lock:
        return list(_closing.values())


def closing_aliases() -> set[str]:
    """The aliases whose pools are being closed."""
    with _lock:
        return set(_closing)


def forget() -> None:
    """In a forked child: the parent's closing threads did not come along.

    The lock is replaced, not taken: a thread of the parent may have held it.
    """
    global _lock
    _lock = threading.Lock()
    _closing.clear()


def _close(alias: str, then: Callable[[], None] | None) -> None:
    try:
        # This thread's own wrapper: the pool is shared by every thread's.
        wrapper = connections[alias]
        # Closed with no wait for its workers first: psycopg_pool wakes the
        # threads waiting for a connection only after that wait, and a worker
        # connecting to a hung server waits for its connect timeout.
        wrapper.pool.close(timeout=0)  # type: ignore[attr-defined]
        wrapper.close_pool()  # type: ignore[attr-defined]
    except KeyError:
        pass  # closed meanwhile by Django (a time zone change in a test)
    except Exception:
        logger.exception("replica_router: closing the pool of %s failed", alias)
    finally:
        with _lock:
            _closing.pop(alias, None)
        if then is not None:
            then()
