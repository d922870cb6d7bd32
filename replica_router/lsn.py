"""WAL positions (LSNs): the text codec, and SQL that reads them as integers.

PostgreSQL prints a WAL position as two hex numbers, ``0/3000148``. The router
compares positions as plain integers, so every query here returns one as a
``bigint`` (its distance from ``0/0``). Nothing here imports Django: the health
probes use it with bare psycopg connections, the router with Django's.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "CURRENT_LSN",
    "INSERT_LSN",
    "RECEIVE_LSN",
    "REPLAY_LSN",
    "format_lsn",
    "parse_lsn",
    "query_lsn",
]


def format_lsn(lsn: int) -> str:
    """``0x3000148`` -> ``"0/3000148"``, as PostgreSQL prints a WAL position."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``"0/3000148"`` -> ``0x3000148``; ValueError on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def _as_bigint(position: str) -> str:
    return f"pg_wal_lsn_diff({position}, '0/0')::bigint"


#: SQL expressions for a node's positions, each a bigint (NULL where the node
#: has none: a primary has no replay position, a standby no current one).
CURRENT_LSN: Final = _as_bigint("pg_current_wal_lsn()")
#: Includes WAL not yet flushed: a token taken after a write covers that write.
INSERT_LSN: Final = _as_bigint("pg_current_wal_insert_lsn()")
RECEIVE_LSN: Final = _as_bigint("pg_last_wal_receive_lsn()")
REPLAY_LSN: Final = _as_bigint("pg_last_wal_replay_lsn()")


def query_lsn(connection: Any, expression: str) -> int | None:
    """Run ``SELECT expression`` on a connection (Django's or psycopg's) and
    return the position, or None where the node has none."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {expression}")
        row = cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])
