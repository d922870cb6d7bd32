"""A read that read-your-writes keeps on the primary, when the primary's
connection breaks under it (a switchover ends every session, a crash too).

It runs again where the write is. After a write in this context, that is a
primary connected to again: with a multi-host ``HOST``, the new leader. Given
a token only, it is a replica that has replayed the token, checked on the
replica itself (``pg_last_wal_replay_lsn()``), as GitLab's load balancer
checks a host before it reads from it there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from django.db import OperationalError

from replica_router import runtime
from replica_router.backends.postgresql.faults import Fault, classify
from replica_router.conf import get_config
from replica_router.context import causal_state, wrote_here
from replica_router.lsn import format_lsn
from replica_router.writes import is_plain_read

__all__ = ["caught_up_replica", "read_elsewhere"]

logger = logging.getLogger("replica_router")

#: How often a replica's replay position is asked while waiting.
POLL_SECONDS = 0.02
#: How often a read whose primary is gone tries to connect to it again.
RECONNECT_SECONDS = 0.1
#: The least a read after a write waits for a primary to connect to again: a
#: Patroni switchover leaves no node writable for a second or two (the write
#: outage in docs/bench/topology.txt), and the read is better late than failed.
PRIMARY_WAIT_SECONDS = 5.0


def read_elsewhere(
    db: Any, cursor_wrapper: Any, sql: Any, error: OperationalError, run: Callable[[], Any]
) -> Any:
    """A read that read-your-writes keeps on ``db``, the primary, whose connection
    broke under it (a switchover ends every session): run it again where the
    write is, waiting up to ``CHECK_INTERVAL + CHECK_TIMEOUT`` (at least
    ``PRIMARY_WAIT_SECONDS`` for a primary); else re-raise.

    After a write in this context, its position is not known (it is asked
    for lazily, and the server is gone), so the read waits for a primary
    to connect to again: with a multi-host ``HOST``, the new leader. Given a
    token only, it runs on a replica that has replayed the token.
    """
    state = causal_state.get()
    wrote = wrote_here()
    token = state.min_lsn if state is not None else None
    if (
        not (wrote or token is not None)
        or classify(error, db.connection) is not Fault.GONE
        or db.in_atomic_block
        or not db.get_autocommit()
        or getattr(cursor_wrapper.cursor, "name", None)
        or not is_plain_read(sql)
    ):
        raise error
    config = get_config()
    wait = config.check_interval + config.check_timeout
    if wrote or token is None:
        _reconnect_within(db, max(wait, PRIMARY_WAIT_SECONDS), error)
    else:
        routing = runtime.current or runtime.load()
        found = caught_up_replica(
            sorted(routing.balancer.rotation),
            format_lsn(token),
            wait=wait,
            connect=db.connect_to,
        )
        if found is None:
            raise error
        db.close()
        db.caught_up = found
        db.ensure_connection()
    logger.info(
        "replica_router: the primary's connection broke under a read; running it on %s",
        db.borrowed_from or db.alias,
    )
    cursor_wrapper.cursor = db.create_cursor()
    return run()


def _reconnect_within(db: Any, wait: float, error: OperationalError) -> None:
    deadline = time.monotonic() + wait
    while True:
        db.close()
        try:
            db.ensure_connection()
            return
        except OperationalError:
            if time.monotonic() >= deadline:
                raise error from None
            time.sleep(RECONNECT_SECONDS)


def caught_up_replica(
    replicas: Iterable[str],
    token: str,
    *,
    wait: float,
    connect: Callable[[str], Any],
) -> tuple[str, Any] | None:
    """``(alias, connection)`` of the first of ``replicas`` that has replayed
    ``token`` within ``wait`` seconds, connected by ``connect(alias)``; None if
    none has. The connections to the others are closed."""
    deadline = time.monotonic() + wait
    connected: dict[str, Any] = {}
    try:
        while True:
            for alias in replicas:
                try:
                    connection = connected.get(alias) or connected.setdefault(alias, connect(alias))
                    row = connection.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [token]
                    ).fetchone()
                    connection.rollback()  # leave it idle, for Django to set up
                except psycopg.Error:
                    _close(connected.pop(alias, None))
                    continue
                if row is not None and row[0]:
                    return alias, connected.pop(alias)
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)
    finally:
        for connection in connected.values():
            _close(connection)


def _close(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(psycopg.Error):
            connection.close()
