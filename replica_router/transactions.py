"""Whether any thread may have a transaction open on the primary.

The router sends a read made inside ``atomic()`` to the primary, so that it sees
the transaction's own writes. Finding out means looking at this thread's (or,
in an event loop, this task's) wrapper for the primary: about a third of
``db_for_read`` (docs/bench/router.txt). Most reads are made with no
transaction open anywhere in the process, so the failover engine counts the
primary's connections that have autocommit off, in every thread: ``atomic()``
turns autocommit off before it marks its block, and on again after it has
unmarked it. While the count is 0 no read can be inside a transaction on the
primary, and the router skips the look.

The count only ever errs high, which costs speed, never correctness: a thread
that ends with autocommit off (a manual ``set_autocommit(False)`` never undone)
keeps it above 0, and so does a fork of a process with a transaction open in
another thread. A primary on another engine than the failover engine is not
counted, and the router always looks (see ``Routing.counts_transactions``).
"""

from __future__ import annotations

import threading

__all__ = ["began", "ended", "open_count"]

_lock = threading.Lock()

#: The primary's connections with autocommit off, in every thread. Read without
#: the lock: an int is read whole.
open_count = 0


def began() -> None:
    """A connection of the primary turned autocommit off."""
    global open_count
    with _lock:
        open_count += 1


def ended() -> None:
    """A connection counted by :func:`began` turned autocommit on again."""
    global open_count
    with _lock:
        open_count -= 1
