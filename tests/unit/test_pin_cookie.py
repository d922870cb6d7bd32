"""The pin cookie reader: what a cookie asks for, and what it may not."""

from __future__ import annotations

import time
from typing import Any

import pytest

from replica_router.conf import RouterConfig, parse_settings
from replica_router.context import CausalState
from replica_router.lsn import parse_lsn
from replica_router.middleware import read_cookie, sign_pin


def config_for(**settings: Any) -> RouterConfig:
    config, problems = parse_settings({"REPLICAS": ["replica_1", "replica_2"], **settings})
    assert problems == []
    return config


LSN = parse_lsn("0/3000148")


def asked(state: CausalState | None) -> tuple[int | None, bool, str | None] | None:
    """What a causal state asks of the reads: the position, the pin, the node."""
    return None if state is None else (state.min_lsn, state.pinned, state.reading_from)


def test_a_write_position_asks_for_a_replica_that_has_replayed_it():
    state = read_cookie(sign_pin("lsn:0/3000148"), config_for(MONOTONIC_READS=False))
    assert asked(state) == (LSN, False, None)


def test_the_replica_read_from_is_kept_under_monotonic_reads_only():
    cookie = sign_pin("lsn:0/3000148@replica_2")
    assert asked(read_cookie(cookie, config_for(MONOTONIC_READS=True))) == (LSN, False, "replica_2")
    assert asked(read_cookie(cookie, config_for(MONOTONIC_READS=False))) == (LSN, False, None)


def test_a_node_that_is_no_replica_is_ignored():
    cookie = sign_pin("lsn:0/3000148@default")
    assert asked(read_cookie(cookie, config_for(MONOTONIC_READS=True))) == (LSN, False, None)


def test_time_mode_pins_to_the_primary():
    config = config_for(READ_YOUR_WRITES="time")
    assert asked(read_cookie(sign_pin("time"), config)) == asked(CausalState(pinned=True))


@pytest.mark.parametrize(("value", "mode"), [("time", "lsn"), ("lsn:0/3000148", "time")])
def test_a_cookie_of_the_other_mode_pins_to_the_primary(value, mode):
    config = config_for(READ_YOUR_WRITES=mode)
    assert asked(read_cookie(sign_pin(value), config)) == asked(CausalState(pinned=True))


def test_an_expired_cookie_asks_for_nothing():
    config = config_for()
    signed_at = int(time.time() - config.pin_seconds) - 5
    assert read_cookie(sign_pin("lsn:0/3000148", signed_at=signed_at), config) is None


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "lsn:0/3000148",  # unsigned
        sign_pin("lsn:0/3000148")[:-1] + "x",  # tampered signature
        sign_pin("lsn:0/3000148").replace("3000148", "3000149", 1),  # tampered value
    ],
    ids=["missing", "empty", "unsigned", "bad-signature", "changed-value"],
)
def test_a_missing_or_tampered_cookie_asks_for_nothing(raw):
    assert read_cookie(raw, config_for()) is None


def test_a_malformed_position_asks_for_nothing():
    assert read_cookie(sign_pin("lsn:not-a-position"), config_for()) is None
