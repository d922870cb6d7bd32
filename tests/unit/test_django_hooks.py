"""The private Django hooks the failover engine relies on, pinned.

While the engine serves a read from a borrowed connection, it replaces
``_cursor`` and ``_close`` on the wrapper instance (an override in the class
would cost every cursor and every close a call, borrowed or not); a stand-in
for a pooled alias is set up with ``_configure_connection``, as Django's pool
sets up its own; the primary's connections count their transactions in
``_set_autocommit``, which atomic() calls around every block. These run under
every Django version of
``make test-matrix``: a Django that stops calling them fails here first.
"""

from __future__ import annotations

import inspect

from django.db.backends.postgresql import base

from replica_router.backends.postgresql.base import DatabaseWrapper


def test_the_connection_set_up_hook_takes_the_connection():
    assert list(inspect.signature(base.DatabaseWrapper._configure_connection).parameters) == [
        "self",
        "connection",
    ]


def _wrapper() -> DatabaseWrapper:
    settings_dict = {
        "NAME": "unused",
        "USER": "",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "OPTIONS": {},
        "TIME_ZONE": None,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {},
    }
    return DatabaseWrapper(settings_dict, alias="hooks")


def test_cursor_and_close_call_the_instance_hooks_a_borrowed_connection_replaces():
    wrapper = _wrapper()
    served = object()
    wrapper._cursor = lambda name=None: served  # type: ignore[method-assign]
    assert wrapper.cursor() is served

    closed: list[bool] = []
    wrapper.connection = object()
    wrapper._close = lambda: closed.append(True)  # type: ignore[method-assign]
    wrapper.close()
    assert closed == [True]
    assert wrapper.connection is None


class _NoServer:
    """Enough of a psycopg connection for atomic() to run its bookkeeping."""

    autocommit = True
    closed = False

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def test_atomic_turns_autocommit_off_before_marking_its_block_and_on_after(
    monkeypatch, django_db_blocker
):
    # The router skips its in-transaction check while no transaction is counted
    # (replica_router.transactions); the count comes from _set_autocommit, so
    # every atomic block must lie between the two calls.
    from django.db import connections, transaction

    from replica_router import transactions

    wrapper = connections["default"]
    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        transactions, "began", lambda: seen.append(("began", wrapper.in_atomic_block))
    )
    monkeypatch.setattr(
        transactions, "ended", lambda: seen.append(("ended", wrapper.in_atomic_block))
    )
    wrapper.connection = _NoServer()
    wrapper.autocommit = True  # as connect() leaves it
    # pytest-django guards connecting; nothing connects here.
    try:
        with django_db_blocker.unblock(), transaction.atomic(using="default"):
            assert seen == [("began", False)]
            assert wrapper.in_atomic_block
            with transaction.atomic(using="default", savepoint=False):
                pass
        assert seen == [("began", False), ("ended", False)]
    finally:
        wrapper.connection = None
        wrapper.autocommit = False
        wrapper._counted_open = False
