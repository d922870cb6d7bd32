"""Which statements count as writes for read-your-writes, and which reads may be retried.

A write that is not noted leaves the request's later reads on replicas that may
not have it yet: the classification must never say "read" for a write.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from replica_router.context import causal
from replica_router.writes import is_plain_read, is_write, note_if_write, statement_text

WRITES = [
    "INSERT INTO t VALUES (1)",
    "  update t SET a = 1",
    "(DELETE FROM t)",
    "\n\tMERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
    "CREATE TABLE t (a int)",
    "TRUNCATE t",
    "COPY t FROM STDIN",
    "WITH moved AS (DELETE FROM t RETURNING *) SELECT * FROM moved",
]
READS = [
    "SELECT 1",
    "select * from t where note = 'x'",
    "WITH c AS (SELECT 1) SELECT * FROM c",
    "SHOW server_version",
    "",
]


@pytest.mark.parametrize("statement", WRITES)
def test_writes_are_writes(statement):
    assert is_write(statement)
    assert is_write(statement.encode())


@pytest.mark.parametrize("statement", READS)
def test_reads_are_not_writes(statement):
    assert not is_write(statement)


def test_a_composed_statement_is_classified_by_its_text():
    # psycopg's sql.Composable has no useful str(): it was read as its repr.
    insert = sql.SQL("INSERT INTO {} (name) VALUES ({})").format(
        sql.Identifier("testapp_author"), sql.Literal("x")
    )
    assert statement_text(insert) == "INSERT INTO \"testapp_author\" (name) VALUES ('x')"
    assert is_write(insert)
    assert not is_write(sql.SQL("SELECT {}").format(sql.Literal(1)))


class _Unreadable:
    def __str__(self) -> str:
        return "SELECT 1"


def test_a_statement_that_cannot_be_read_counts_as_a_write():
    assert statement_text(_Unreadable()) is None
    assert is_write(_Unreadable())
    assert is_write(None)


def test_noting_a_write_pins_the_context():
    with causal() as state:
        note_if_write("SELECT 1")
        assert not state.wrote
        note_if_write(sql.SQL("UPDATE t SET a = 1"))
        assert state.wrote


@pytest.mark.parametrize(
    ("statement", "retry"),
    [
        ("SELECT * FROM t", True),
        ("  (SELECT 1)", True),
        ("WITH c AS (SELECT 1) SELECT * FROM c", True),
        (sql.SQL("SELECT {}").format(sql.Literal(1)), True),
        ("SELECT * FROM t FOR UPDATE", False),
        ("select * from t for no key update", False),
        ("SELECT * FROM t FOR SHARE", False),
        ("SELECT * FROM t FOR KEY SHARE", False),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
        ("INSERT INTO t VALUES (1)", False),
        ("SHOW server_version", False),
        (_Unreadable(), False),
    ],
)
def test_only_plain_reads_may_run_twice(statement, retry):
    assert is_plain_read(statement) is retry
