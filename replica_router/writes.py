"""Which statements write, and noting the writes made on the primary.

Read-your-writes needs to know when the code running now really wrote. The
failover engine's cursors on the primary call :func:`note_if_write` for every
statement; a primary on Django's own engine gets :func:`detect_writes` as an
execute wrapper instead (:func:`hook_write_detector`).

A statement is classified by its leading keyword. Whatever cannot be read as
text is taken to write: noting a write that was not one only sends some reads
to the primary, while missing one would serve stale reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from django.db import connections
from django.db.backends.signals import connection_created
from psycopg import sql as psycopg_sql

from replica_router.conf import engine_flag, get_config
from replica_router.context import note_write

__all__ = [
    "detect_writes",
    "hook_write_detector",
    "install_write_detector",
    "is_plain_read",
    "is_write",
    "note_if_write",
    "statement_text",
]

# Statements that change data or schema. SELECT ... FOR UPDATE locks but does
# not write, and a SELECT calling a writing function is not detected.
_WRITE_KEYWORDS: Final = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE",
        "GRANT", "REVOKE", "COMMENT", "COPY", "REINDEX", "CLUSTER", "REFRESH",
    }
)  # fmt: skip
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_READ_KEYWORDS: Final = frozenset({"SELECT", "WITH"})
_LOCKING: Final = ("FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE")


def statement_text(sql: object) -> str | None:
    """A statement as text: Django's str, psycopg's bytes or ``sql.Composable``;
    None for anything that cannot be read."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    if isinstance(sql, psycopg_sql.Composable):
        try:
            return sql.as_string(None)
        except Exception:  # needs a connection's encoding or adapters
            return None
    return None


def _leading_keyword(text: str) -> str:
    head = text.lstrip(" \t\r\n(").split(None, 1)
    return head[0].upper() if head else ""


def is_write(sql: object) -> bool:
    """Whether a statement writes (by its leading keyword, or a writing CTE).

    A statement that cannot be read as text counts as a write: the safe side.
    """
    text = statement_text(sql)
    if text is None:
        return True
    keyword = _leading_keyword(text)
    if keyword in _WRITE_KEYWORDS:
        return True
    return keyword == "WITH" and _CTE_WRITE.search(text) is not None


def is_plain_read(sql: object) -> bool:
    """Whether a statement only reads and takes no row locks: safe to run twice."""
    text = statement_text(sql)
    if text is None or _leading_keyword(text) not in _READ_KEYWORDS or is_write(text):
        return False
    upper = text.upper()
    return not any(lock in upper for lock in _LOCKING)


def note_if_write(sql: object) -> None:
    """Note a write for read-your-writes if ``sql`` is one (it ran on the primary)."""
    if is_write(sql):
        note_write()


def detect_writes(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    """An execute wrapper for the primary's connections: note each real write."""
    result = execute(sql, params, many, context)
    note_if_write(sql)
    return result


def install_write_detector(connection: Any, **kwargs: Any) -> None:
    """Add :func:`detect_writes` to a connection of the primary, once.

    For primaries on Django's own engine; ``replica_router.backends.postgresql``
    notes writes in its cursors instead. Connected to ``connection_created``
    by :func:`hook_write_detector`; the wrapper list belongs to Django's
    connection object and survives reconnects, hence the membership test.
    """
    if getattr(connection, "notes_writes", False):
        return
    try:
        primary = get_config().primary
    except Exception:  # misconfigured: the system checks say so
        return
    if connection.alias == primary and detect_writes not in connection.execute_wrappers:
        connection.execute_wrappers.append(detect_writes)


_HOOK_UID: Final = "replica_router.install_write_detector"


def hook_write_detector() -> bool:
    """Connect :func:`install_write_detector` to ``connection_created`` if it is needed.

    It is needed unless the primary's engine notes writes itself. Any receiver
    of that signal costs every connection (each checkout from a pool) a
    dispatch of a few microseconds, so it is connected only when it is needed.
    Called when the app is ready and when the settings change. Returns whether
    it is connected.
    """
    if _primary_notes_writes():
        connection_created.disconnect(dispatch_uid=_HOOK_UID)
        return False
    connection_created.connect(install_write_detector, dispatch_uid=_HOOK_UID)
    for connection in connections.all(initialized_only=True):
        install_write_detector(connection)
    return True


def _primary_notes_writes() -> bool:
    try:
        primary = get_config().primary
    except Exception:  # misconfigured: the system checks say so
        return False
    return engine_flag(primary, "notes_writes")
