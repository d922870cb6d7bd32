"""Which errors on a replica are worth running a read again elsewhere for."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest
from django.db import OperationalError, ProgrammingError

from replica_router.backends.postgresql.faults import Fault, classify

OPEN = SimpleNamespace(closed=False, broken=False)


def django_error(psycopg_error: psycopg.Error, wrapper=OperationalError) -> Exception:
    """What Django raises: its own error, chained from psycopg's."""
    try:
        raise wrapper(str(psycopg_error)) from psycopg_error
    except wrapper as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.AdminShutdown("terminating connection due to unexpected postmaster exit"),
        psycopg.errors.CrashShutdown("terminating connection because of crash of another process"),
        psycopg.errors.CannotConnectNow("the database system is shutting down"),
        psycopg.errors.DatabaseDropped("terminating connection due to conflict with recovery"),
    ],
)
def test_a_server_ending_the_session_is_gone_even_before_the_socket_closes(error):
    # The FATAL message arrives before the end of the stream: psycopg may not
    # have marked the connection broken yet.
    assert classify(django_error(error), OPEN) is Fault.GONE
    assert classify(error, OPEN) is Fault.GONE


@pytest.mark.parametrize(
    "message",
    [
        "server conn crashed?",
        "server login has been failing, try again later (server_login_retry)",
        "query_wait_timeout",
    ],
)
def test_pgbouncer_saying_its_server_is_gone_is_gone(message):
    # PgBouncer reports these as SQLSTATE 08P01 and closes the client's
    # connection, maybe before psycopg has seen it close.
    assert classify(django_error(psycopg.errors.ProtocolViolation(message)), OPEN) is Fault.GONE


@pytest.mark.parametrize(
    "connection",
    [None, SimpleNamespace(closed=True, broken=False), SimpleNamespace(closed=False, broken=True)],
)
def test_a_lost_connection_is_gone(connection):
    error = django_error(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert classify(error, connection) is Fault.GONE


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.SerializationFailure("canceling statement due to conflict with recovery"),
        psycopg.errors.DeadlockDetected("canceling statement due to conflict with recovery"),
    ],
)
def test_a_recovery_conflict_is_a_conflict(error):
    assert classify(django_error(error), OPEN) is Fault.CONFLICT
    # Also when the replica ended the session for it: the replica is healthy.
    closed = SimpleNamespace(closed=True, broken=False)
    assert classify(django_error(error), closed) is Fault.CONFLICT


def test_a_connection_refused_for_a_conflict_is_a_conflict():
    # psycopg gives a failed connection no SQLSTATE; the server's message says it.
    error = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5433 failed: '
        "FATAL:  canceling statement due to conflict with recovery"
    )
    assert classify(error, None) is Fault.CONFLICT
    refused = psycopg.OperationalError("connection failed: Connection refused")
    assert classify(refused, None) is Fault.GONE


@pytest.mark.parametrize(
    "error",
    [
        django_error(psycopg.errors.UndefinedTable("relation does not exist"), ProgrammingError),
        django_error(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
        OperationalError("no cause"),
    ],
)
def test_an_error_about_the_statement_is_the_callers(error):
    assert classify(error, OPEN) is None
