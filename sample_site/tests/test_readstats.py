"""The per-alias read counters behind /replicas/: a rolling window, shared by threads.

A wrong count would make the demo's "reads spread 2:1" a lie, so they are
checked for lost updates under threads and for reads that fall out of the window.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from bookshop import readstats
from bookshop.readstats import ReadCounter, count_reads, is_read
from helpers import db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_recent_reads_roll_out_of_the_window():
    clock = Clock()
    counter = ReadCounter(window=10, clock=clock)
    for _ in range(3):
        counter.record("replica_1")
    clock.now += 5
    counter.record("replica_1")
    counter.record("replica_2")
    assert counter.counts() == {
        "replica_1": {"recent": 4, "total": 4},
        "replica_2": {"recent": 1, "total": 1},
    }
    clock.now += 6  # the first three are now 11 s old
    assert counter.counts()["replica_1"] == {"recent": 1, "total": 4}
    clock.now += 100
    assert counter.counts()["replica_2"] == {"recent": 0, "total": 1}


def test_no_count_is_lost_between_threads():
    counter = ReadCounter()
    barrier = threading.Barrier(8)

    def work(alias: str) -> None:
        barrier.wait()
        for _ in range(5000):
            counter.record(alias)

    threads = [threading.Thread(target=work, args=(f"r{i % 2}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = counter.counts()
    assert counts["r0"]["total"] == counts["r1"]["total"] == 20000
    assert counts["r0"]["recent"] == 20000


def test_a_window_must_be_a_second_or_more():
    with pytest.raises(ValueError, match="at least 1 second"):
        ReadCounter(window=0)


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ('SELECT "bookshop_book"."id" FROM "bookshop_book"', True),
        ("  (SELECT 1) UNION (SELECT 2)", True),
        ('INSERT INTO "bookshop_review" VALUES (1)', False),
        ("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint", False),
        ("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint", False),
    ],
)
def test_what_counts_as_a_read(sql, read):
    assert is_read(sql) is read


@db
def test_every_alias_counts_its_reads_once_installed(replica_cluster):
    for alias in ("default", "replica_1", "replica_2"):
        connection = connections[alias]
        connection.ensure_connection()
        assert connection.execute_wrappers.count(count_reads) == 1
        readstats._install_on(connection)  # idempotent
        assert connection.execute_wrappers.count(count_reads) == 1
        before = readstats.counter.counts().get(alias, {"total": 0})["total"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        with readstats.not_counted(), connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert readstats.counter.counts()[alias]["total"] == before + 1
