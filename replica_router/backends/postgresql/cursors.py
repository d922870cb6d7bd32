"""The failover engine's cursors: a replica's retries a failed read, the primary's
notes writes (and hands a pinned read whose connection broke to a replica).

Cursor classes (the backend's ``make_cursor``, overriding
``CursorWrapper.execute``) rather than execute wrappers: Django runs every query
of a connection that has wrappers through a chain of partials.
bench/bench_hooks.py times both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import OperationalError
from django.db.backends import utils
from django.db.backends.postgresql import base

from replica_router.backends.postgresql.caught_up import read_elsewhere
from replica_router.writes import note_if_write

__all__ = [
    "RetryingCursorDebugWrapper",
    "RetryingCursorWrapper",
    "WriteNotingCursorDebugWrapper",
    "WriteNotingCursorWrapper",
]


class RetryMixin:
    """``execute`` that hands a failed read to :meth:`DatabaseWrapper.retry_read`.

    Each run goes through the parent class's ``execute``: under a debug cursor,
    each is recorded, as each is a statement the server ran.
    """

    db: Any  # the engine's DatabaseWrapper
    _execute_once: Callable[..., Any]

    def execute(self, sql: Any, params: Any = None) -> Any:
        try:
            return self._execute_once(sql, params)
        except OperationalError as exc:
            return self.db.retry_read(self, sql, exc, lambda: self._execute_once(sql, params))


class RetryingCursorWrapper(RetryMixin, utils.CursorWrapper):
    _execute_once = utils.CursorWrapper.execute


# The PostgreSQL backend's debug wrapper, whose copy() logs the COPY statement.
class RetryingCursorDebugWrapper(RetryMixin, base.CursorDebugWrapper):
    _execute_once = base.CursorDebugWrapper.execute


class WriteNotingMixin:
    """``execute`` and ``executemany`` that note a write (see ``writes.note_if_write``)."""

    _execute_once: Callable[..., Any]
    _executemany_once: Callable[..., Any]

    db: Any  # the engine's DatabaseWrapper

    def execute(self, sql: Any, params: Any = None) -> Any:
        try:
            result = self._execute_once(sql, params)
        except OperationalError as exc:
            return read_elsewhere(self.db, self, sql, exc, lambda: self._execute_once(sql, params))
        note_if_write(sql)
        return result

    def executemany(self, sql: Any, param_list: Any) -> Any:
        result = self._executemany_once(sql, param_list)
        note_if_write(sql)
        return result


class WriteNotingCursorWrapper(WriteNotingMixin, utils.CursorWrapper):
    _execute_once = utils.CursorWrapper.execute
    _executemany_once = utils.CursorWrapper.executemany


class WriteNotingCursorDebugWrapper(WriteNotingMixin, base.CursorDebugWrapper):
    _execute_once = base.CursorDebugWrapper.execute
    _executemany_once = base.CursorDebugWrapper.executemany
