"""The WAL position codec: what the pin cookie and causality tokens carry."""

from __future__ import annotations

import pytest

from replica_router.lsn import CURRENT_LSN, INSERT_LSN, REPLAY_LSN, format_lsn, parse_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/3000148", 0x3000148),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_positions_round_trip_as_postgresql_prints_them(text, value):
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


def test_lower_case_and_surrounding_space_are_read():
    assert parse_lsn(" 16/b374d848\n") == (0x16 << 32) | 0xB374D848


@pytest.mark.parametrize(
    "text", ["", "/", "0/", "/1", "3000148", "0/xyz", "1/2/3", "123456789/0", "0/123456789"]
)
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError, match="not a WAL position|invalid literal"):
        parse_lsn(text)


def test_the_sql_reads_every_position_as_a_bigint():
    for expression, function in [
        (CURRENT_LSN, "pg_current_wal_lsn()"),
        (INSERT_LSN, "pg_current_wal_insert_lsn()"),
        (REPLAY_LSN, "pg_last_wal_replay_lsn()"),
    ]:
        assert expression == f"pg_wal_lsn_diff({function}, '0/0')::bigint"
