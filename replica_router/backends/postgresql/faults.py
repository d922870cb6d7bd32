"""What an error on a replica means for the read that got it.

Two kinds of error are worth running a read again elsewhere for:

* **gone**: the server, or the connection to it, is gone. The connection is
  closed or broken, or the server said it is ending the session: SQLSTATE
  class 57P (``admin_shutdown``, ``crash_shutdown``, ``cannot_connect_now``,
  ``database_dropped``), which includes "terminating connection due to
  unexpected postmaster exit"; or class 08, a connection exception, which is
  how PgBouncer reports that the server behind it is gone ("server conn
  crashed?", "server login has been failing, try again later
  (server_login_retry)", "query_wait_timeout": all 08P01) before it closes
  the client's connection. The replica leaves rotation.
* **conflict**: the replica cancelled the statement because it conflicted with
  WAL replay ("canceling statement due to conflict with recovery", SQLSTATE
  40001, or 40P01 for a buffer-pin deadlock). The replica is fine and stays in
  rotation; only this statement runs elsewhere.

Anything else (a syntax error, a constraint) is the caller's: running it
again would fail the same way.

A replica can also refuse a new connection for a conflict (a FATAL during the
session's start-up). psycopg reports a failed connection without a SQLSTATE,
so there the server's message is read: "conflict with recovery", as servers
running in English say it.
"""

from __future__ import annotations

import enum
from typing import Any, Final

__all__ = ["Fault", "classify"]


class Fault(enum.Enum):
    GONE = "gone"
    CONFLICT = "conflict"


_GONE_CLASSES: Final = ("57P", "08")
_CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
_CONFLICT_MESSAGE: Final = "conflict with recovery"


def _sqlstate(error: BaseException) -> str | None:
    # Django re-raises psycopg's error as its own, chained from it.
    for candidate in (error, error.__cause__):
        sqlstate = getattr(candidate, "sqlstate", None)
        if isinstance(sqlstate, str):
            return sqlstate
    return None


def classify(error: BaseException, connection: Any) -> Fault | None:
    """The fault ``error`` shows on a replica's psycopg ``connection`` (None if closed)."""
    sqlstate = _sqlstate(error)
    if sqlstate is not None and sqlstate.startswith(_GONE_CLASSES):
        return Fault.GONE
    # Checked before the connection: a replica ends an idle-in-transaction
    # session that blocks replay with the same SQLSTATE (FATAL "terminating
    # connection due to conflict with recovery"), and is just as healthy.
    if sqlstate in _CONFLICT_STATES or (sqlstate is None and _CONFLICT_MESSAGE in str(error)):
        return Fault.CONFLICT
    if connection is None or connection.closed or connection.broken:
        return Fault.GONE
    return None
