"""Django's PostgreSQL backend, plus failover for reads on replicas.

Use it as ``"ENGINE": "replica_router.backends.postgresql"`` on every alias the
router manages; ``replica_router.env.database_settings()`` does so by default.
On the primary, and on aliases the router does not manage, it behaves exactly
like ``django.db.backends.postgresql``. On a replica alias:

* **Connecting fails** (refused, reset, timed out, pool timeout, a pooled
  connection that fails its ``CONN_HEALTH_CHECKS`` check because the server is
  gone): the replica is taken out of rotation at once, and the connection is
  made to another replica in rotation instead, or to the primary as
  ``FALLBACK`` says. The query runs there; nothing is retried because nothing
  was sent.
* **The connection breaks during a read** (the server died under it): the
  replica is taken out of rotation at once, and the statement is run again on
  a new connection made as above, if and only if it is safe to: a single
  ``SELECT`` (no ``FOR UPDATE``/``FOR SHARE``, no writing CTE), in autocommit
  mode (outside ``atomic()``), not through a server-side cursor, and only once.
  Otherwise Django's ``OperationalError`` reaches the caller.

A connection made to another node this way is used for one cursor only and
then closed, so that the alias goes back to its own server as soon as the
health monitor puts it back in rotation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import OperationalError
from django.db.backends.postgresql import base
from django.dispatch import receiver
from psycopg_pool import PoolClosed

from replica_router import transactions
from replica_router.backends.postgresql.creation import DatabaseCreation
from replica_router.backends.postgresql.cursors import (
    RetryingCursorDebugWrapper,
    RetryingCursorWrapper,
    WriteNotingCursorDebugWrapper,
    WriteNotingCursorWrapper,
)
from replica_router.backends.postgresql.faults import Fault, classify
from replica_router.backends.postgresql.pools import close_pool_soon
from replica_router.conf import CONNECT_TIMEOUT, get_config
from replica_router.cutoff import registry
from replica_router.discovery.topology import is_retired, remove_orphans
from replica_router.router import alternative_for
from replica_router.runtime import PRIMARY, REPLICA, get_counters, get_monitor, role_of
from replica_router.signals import replica_state_changed
from replica_router.writes import is_plain_read

__all__ = ["DatabaseWrapper"]

logger = logging.getLogger("replica_router")


class DatabaseWrapper(base.DatabaseWrapper):
    #: The primary's cursors note writes for read-your-writes themselves, so
    #: the app need not hook ``connection_created`` (see ``writes``).
    notes_writes = True
    #: The primary's connections count themselves in ``transactions``.
    counts_transactions = True
    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The alias whose server this connection was made to instead, or None.
        self.borrowed_from: str | None = None
        self._connecting = False
        #: Where the next connection goes instead of this replica's server, once:
        #: a read cancelled for a recovery conflict runs again on a stand-in,
        #: and if the stand-in cancels it too, on the primary.
        self._next_server: str | None = None
        #: A replica's connection that the next connect takes, once: a read
        #: pinned to this primary runs there after the primary's connection broke.
        self.caught_up: tuple[str, Any] | None = None
        #: Whether ``transactions`` counts this connection as having autocommit off.
        self._counted_open = False

    # -- connecting ------------------------------------------------------------

    def close_if_unusable_or_obsolete(self) -> None:
        # A replica that discovery retired: its connection closes at this
        # request boundary, so that its alias can go once none is left.
        if self.connection is not None and is_retired(self.alias):
            self.close()
            return
        super().close_if_unusable_or_obsolete()

    def close(self) -> None:
        super().close()
        if is_retired(self.alias):
            remove_orphans()

    def connect(self) -> None:
        # connect() opens cursors of its own (time zone, role); those must not
        # count as the one cursor a borrowed connection serves.
        self._connecting = True
        try:
            for attempt in range(_MAX_RUNS):
                try:
                    super().connect()
                    return
                except psycopg.Error as exc:
                    if attempt == _MAX_RUNS - 1 or not self._set_up_failed(exc):
                        raise
                # ...and again, elsewhere: see get_new_connection
        finally:
            self._connecting = False

    def _set_up_failed(self, exc: psycopg.Error) -> bool:
        """The session's set-up (time zone, role) failed on a replica after it
        accepted the connection: it died (treated like a refused connection), or
        cancelled a set-up query for a recovery conflict (it stays in rotation).
        Returns whether to connect again, elsewhere."""
        connection = self.connection
        fault = classify(exc, connection)
        if connection is None or fault is None or role_of(self.alias) is not REPLICA:
            return False  # connecting failed (handled there), or not a replica's fault
        self.connection = None
        with contextlib.suppress(psycopg.Error):
            connection.close()
        self._note_fault(fault, exc)
        return True

    def _note_fault(self, fault: Fault, exc: BaseException) -> None:
        """Account for a fault of the server this connection is on, and choose
        where the next connection goes."""
        server = self.borrowed_from or self.alias
        if fault is Fault.CONFLICT:
            _count_conflict(server)
            # A stand-in that cancels too is in the same storm: the primary
            # replays nothing and cancels nothing.
            self._next_server = _PRIMARY_NEXT if self.borrowed_from else _STAND_IN_NEXT
        elif role_of(server) is REPLICA:
            _server_failed(server, exc)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.borrowed_from is not None:
            self._give_back()
        if self.caught_up is not None:
            (alias, connection), self.caught_up = self.caught_up, None
            self._borrow(alias)
            _count_failover(self.alias, alias)
            return connection
        if role_of(self.alias) is not REPLICA:
            return super().get_new_connection(conn_params)
        if self._next_server is not None:
            target, self._next_server = self._next_server, None
            if target == _PRIMARY_NEXT:
                return self._connect_as_stand_in(_primary())
            return self._connect_elsewhere(None)
        if _known_down(self.alias):
            # Raced with the monitor: do not wait on a server known to be dead.
            return self._connect_elsewhere(None)
        try:
            if self.pool:
                # Registered when the pool made it: see _configure_connection.
                connection = super().get_new_connection(conn_params)
            else:
                connection = registry.connect(
                    self.alias, lambda: super(DatabaseWrapper, self).get_new_connection(conn_params)
                )
        except PoolClosed as exc:  # closed after the replica was found down: see _cut_off
            return self._connect_elsewhere(exc)
        except psycopg.Error as exc:  # refused, reset, timed out, PoolTimeout, a conflict
            if _known_down(self.alias):  # cut meanwhile: it is reported already
                return self._connect_elsewhere(exc)
            if classify(exc, None) is Fault.CONFLICT:
                _count_conflict(self.alias)
            else:
                _server_failed(self.alias, exc)
            return self._connect_elsewhere(exc)
        if _known_down(self.alias):
            # Found down and cut while this one was made or checked out: the
            # cut may have missed it, and nothing would cut it if the server hangs.
            with contextlib.suppress(psycopg.Error):
                connection.close()
            if self.pool:
                with contextlib.suppress(Exception):  # a pool closed meanwhile
                    self.pool.putconn(connection)  # a closed connection: it makes a new one
            return self._connect_elsewhere(None)
        return connection

    def _connect_elsewhere(self, error: BaseException | None) -> Any:
        """Connect to a stand-in: another replica in rotation, else per FALLBACK.

        A stand-in that fails too is taken out of rotation and the next one is
        tried; the primary comes last.
        """
        tried = {self.alias}
        last_error = error
        primary = _primary()
        while True:
            alternative = alternative_for(self.alias)
            if alternative in tried:
                if primary in tried:
                    break
                alternative = primary
            tried.add(alternative)
            try:
                return self._connect_as_stand_in(alternative)
            except psycopg.Error as exc:
                last_error = exc
                if alternative != primary and classify(exc, None) is not Fault.CONFLICT:
                    _report_failure(alternative, exc)
        if last_error is None:
            last_error = psycopg.OperationalError(f"no node can stand in for {self.alias}")
        raise last_error

    def _connect_as_stand_in(self, alias: str) -> Any:
        """A connection to ``alias``'s server, serving this alias for one cursor."""
        connection = self.connect_to(alias)
        self._borrow(alias)
        logger.info("replica_router: %s unavailable, reading from %s", self.alias, alias)
        _count_failover(self.alias, alias)
        return connection

    def connect_to(self, alias: str) -> Any:
        from django.db import connections

        params = connections.create_connection(alias).get_connection_params()
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        if self.pool:
            # As Django does for pooled connections; it sets autocommit later.
            params["autocommit"] = True
        connection = self.Database.connect(**params)
        if role_of(alias) is REPLICA:
            registry.register(alias, connection)
        if self.pool:
            # Django configures pooled connections in the pool's callback; this
            # one does not come from the pool (nor is it this alias's to register).
            super()._configure_connection(connection)  # type: ignore[misc]
        return connection

    def _configure_connection(self, connection: Any) -> Any:
        # Django's pool calls this for each connection it makes (the engine's
        # stand-ins call Django's own, above): registering a pooled connection
        # once, here, spares every checkout the registration.
        # docs/bench/orm.txt: registering on each checkout cost about 1 % of a
        # pooled per-request read.
        if self.pool and role_of(self.alias) is REPLICA:
            registry.register(self.alias, connection)
        return super()._configure_connection(connection)  # type: ignore[misc]

    # -- transactions on the primary -------------------------------------------

    def _set_autocommit(self, autocommit: bool) -> None:
        # atomic() turns autocommit off before it marks its block and on again
        # after it unmarks it, so the count covers every atomic block. A private
        # hook (pinned in tests/unit/test_django_hooks.py), for speed: the check
        # it lets the router skip is 0.74 -> 0.40 of multidb's db_for_read
        # (docs/bench/router.txt).
        super()._set_autocommit(autocommit)  # type: ignore[misc]
        if autocommit:
            if self._counted_open:
                self._counted_open = False
                transactions.ended()
        elif not self._counted_open and role_of(self.alias) is PRIMARY:
            self._counted_open = True
            transactions.began()

    # While a connection is borrowed, _cursor and _close are replaced on the
    # instance rather than overridden in the class: an override costs every
    # cursor and every return to the pool a call, borrowed or not.

    def _borrow(self, alias: str) -> None:
        self.borrowed_from = alias
        self._cursor = self._borrowed_cursor
        self._close = self._borrowed_close

    def _give_back(self) -> None:
        """Forget the borrowed connection's instance methods (not the connection)."""
        self.borrowed_from = None
        self.__dict__.pop("_cursor", None)
        self.__dict__.pop("_close", None)

    def _borrowed_cursor(self, name: str | None = None) -> Any:
        if not self._connecting and not self.in_atomic_block:
            self.close()  # one cursor per borrowed connection
        return super()._cursor(name)  # type: ignore[misc]

    def _borrowed_close(self) -> None:
        self._give_back()
        if self.connection is not None:
            with self.wrap_database_errors:
                self.connection.close()
            self.connection = None

    # -- a read that failed ------------------------------------------------------

    # Cursors of replica aliases retry a failed read; cursors of the primary
    # note writes (see ``cursors``).
    def make_cursor(self, cursor: Any) -> Any:
        role = role_of(self.alias)
        if role is REPLICA:
            return RetryingCursorWrapper(cursor, self)
        if role is PRIMARY:
            return WriteNotingCursorWrapper(cursor, self)
        return super().make_cursor(cursor)

    def make_debug_cursor(self, cursor: Any) -> Any:
        role = role_of(self.alias)
        if role is REPLICA:
            return RetryingCursorDebugWrapper(cursor, self)
        if role is PRIMARY:
            return WriteNotingCursorDebugWrapper(cursor, self)
        return super().make_debug_cursor(cursor)

    def retry_read(
        self, cursor_wrapper: Any, sql: Any, error: OperationalError, run: Callable[[], Any]
    ) -> Any:
        """Run the read ``sql`` again elsewhere after ``error``, if the error shows
        a fault of the server (see ``faults``) and running it again is safe; else
        re-raise.

        A read runs at most three times: after a conflict on a stand-in too, it
        runs on the primary; after a broken connection, once more.
        """
        for attempt in range(_MAX_RUNS - 1):
            fault = classify(error, self.connection)
            if fault is None or not self._may_retry(sql, cursor_wrapper):
                raise error
            if fault is Fault.GONE and attempt:
                raise error  # a broken connection gets one more run, not two
            logger.info(
                "replica_router: a read on %s failed (%s); running it again",
                self.alias,
                fault.value,
            )
            self._note_fault(fault, error)
            self.close()
            self.ensure_connection()
            cursor_wrapper.cursor = self.create_cursor()
            try:
                return run()
            except OperationalError as again:
                error = again
        raise error

    def _may_retry(self, sql: Any, cursor_wrapper: Any) -> bool:
        """One plain SELECT, in autocommit mode, not through a server-side cursor."""
        if self.in_atomic_block or not self.get_autocommit():
            return False
        if role_of(self.alias) is not REPLICA or getattr(cursor_wrapper.cursor, "name", None):
            return False
        return is_plain_read(sql)


#: Where the next connection goes after a recovery conflict (see ``_note_fault``).
_STAND_IN_NEXT, _PRIMARY_NEXT = "stand-in", "primary"
#: A read runs at most this many times.
_MAX_RUNS = 3


def _primary() -> str:
    return get_config().primary


def _known_down(alias: str) -> bool:
    monitor = get_monitor()
    return monitor is not None and alias in monitor.down


@receiver(replica_state_changed, dispatch_uid="replica_router.backends.cut_off")
def _cut_off(*, alias: str, new_state: str, **kwargs: Any) -> None:
    """A replica found down, dead or hung: nothing of this process waits on it.

    Its connections are shut down first, so that reads waiting on a hung
    server fail over now; then its pool is closed, which wakes the threads
    waiting for one of its connections, off this thread (see ``pools``).

    Not the primary's: nothing can run elsewhere, and a probe that timed out
    on a busy primary would abort every transaction in flight, and leave a
    COMMIT cut midway not knowing whether it committed.
    """
    if new_state == "down" and role_of(alias) is REPLICA:
        cut = registry.cut(alias)
        if cut:
            logger.info("replica_router: cut %d connections to %s (down)", cut, alias)
        close_pool_soon(alias)


def _count_failover(from_alias: str, to_alias: str) -> None:
    counters = get_counters()
    if counters is not None:
        counters.failover(from_alias, to_alias)


def _count_conflict(alias: str) -> None:
    counters = get_counters()
    if counters is not None:
        counters.recovery_conflict(alias)


def _server_failed(alias: str, exc: BaseException) -> None:
    """Take a replica out of rotation and close its pool (see above)."""
    _report_failure(alias, exc)
    close_pool_soon(alias)


def _report_failure(alias: str, exc: BaseException) -> None:
    monitor = get_monitor()
    if monitor is not None:
        monitor.report_failure(alias, exc)
