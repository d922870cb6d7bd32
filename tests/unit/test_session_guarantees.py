"""Monotonic reads and staleness budgets: the routing rules, with no database.

What the health monitor measures is set by hand here (its ``freshness`` and the
balancer's rotation); tests/integration/test_consistency.py holds the same rules
to account against replicas that really lag.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import threading
import time
from collections import Counter

import pytest
from django.test import override_settings

from replica_router import ReplicaRouter, causal, max_lag, runtime, use_primary
from replica_router.context import MaxLag, lag_budget, primary_forced
from replica_router.health.model import Freshness
from replica_router.router import alternative_for
from testbed.testapp.models import Author

WEIGHTED = {"REPLICAS": {"replica_1": 3, "replica_2": 1}, "HEALTH_CHECKS": False}
MEASURED = {"REPLICAS": {"replica_1": 3, "replica_2": 1}, "MAX_LAG_SECONDS": 5.0}
GAP = 1.5  # CHECK_INTERVAL 1 + CHECK_TIMEOUT 0.5, the defaults


@pytest.fixture
def router():
    return ReplicaRouter()


def context_reads(router, n=6):
    with causal():
        return [router.db_for_read(Author) for _ in range(n)]


# -- monotonic reads ---------------------------------------------------------


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_a_context_reads_from_one_replica(router):
    assert len(set(context_reads(router))) == 1
    # Outside any context each read is routed afresh.
    assert {router.db_for_read(Author) for _ in range(4)} == {"replica_1", "replica_2"}


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_contexts_spread_over_the_replicas_by_weight(router):
    firsts = Counter(context_reads(router, 3)[0] for _ in range(400))
    assert firsts == {"replica_1": 300, "replica_2": 100}


@override_settings(REPLICA_ROUTER={**WEIGHTED, "MONOTONIC_READS": False})
def test_without_monotonic_reads_each_read_is_routed_afresh(router):
    assert set(context_reads(router, 8)) == {"replica_1", "replica_2"}


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_a_replica_leaving_rotation_moves_the_context_to_the_primary_for_good(router):
    with causal() as state:
        first = router.db_for_read(Author)
        other = "replica_2" if first == "replica_1" else "replica_1"
        runtime.get_balancer().set_weights({other: 1})
        # The other replica may be older than what this context has read.
        assert router.db_for_read(Author) == "default"
        runtime.get_balancer().set_weights({"replica_1": 3, "replica_2": 1})
        assert router.db_for_read(Author) == "default"
        assert state.reading_from == "default"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_a_read_on_the_primary_keeps_the_later_reads_there(router):
    with causal():
        assert router.db_for_read(Author) != "default"
        with use_primary():
            assert router.db_for_read(Author) == "default"
        assert router.db_for_read(Author) == "default"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_failover_under_monotonic_reads_goes_to_the_primary(router):
    with causal():
        alias = router.db_for_read(Author)
        assert alternative_for(alias) == "default"
        assert router.db_for_read(Author) == "default"
    # Outside a context another replica may stand in.
    assert alternative_for("replica_1") == "replica_2"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_threads_and_tasks_each_keep_their_own_replica(router):
    seen: list[set[str]] = []

    def worker():
        seen.append(set(context_reads(router, 20)))

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def task():
        with causal():
            aliases = set()
            for _ in range(10):
                aliases.add(router.db_for_read(Author))
                await asyncio.sleep(0)
            return aliases

    async def many():
        return await asyncio.gather(*(task() for _ in range(40)))

    seen.extend(asyncio.run(many()))
    assert all(len(aliases) == 1 for aliases in seen)
    assert set().union(*seen) == {"replica_1", "replica_2"}


# -- max_lag: the API ----------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_max_lag_refuses_a_budget_that_is_not_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="positive finite"):
        max_lag(bad)


@pytest.mark.parametrize("bad", [True, "5", None])
def test_max_lag_refuses_what_is_not_a_number(bad):
    with pytest.raises(TypeError, match="number of seconds"):
        max_lag(bad)


def test_max_lag_nests_and_restores():
    assert lag_budget() is None
    with max_lag(600):
        with max_lag(2):
            assert lag_budget() == 2.0  # the innermost block wins
        assert lag_budget() == 600.0
    assert lag_budget() is None
    with pytest.raises(ZeroDivisionError), max_lag(3):
        1 / 0  # noqa: B018
    assert lag_budget() is None


def test_use_primary_wins_over_a_budget_inside_or_outside_it():
    with use_primary(), max_lag(5):
        assert lag_budget() is None and primary_forced()

    @max_lag(5)
    def inner():
        return primary_forced(), lag_budget()

    with use_primary():
        assert inner() == (True, None)
    with max_lag(1), use_primary():
        assert primary_forced()
    # A budget of one second is not "use_primary" (1.0 == True in Python).
    with max_lag(1):
        assert lag_budget() == 1.0 and not primary_forced()


def test_max_lag_decorates_sync_and_async_functions():
    @max_lag(30)
    def report():
        return lag_budget()

    @max_lag(0.5)
    async def fresh():
        await asyncio.sleep(0)
        return lag_budget()

    assert report() == 30.0
    assert asyncio.run(fresh()) == 0.5
    assert report.__name__ == "report"
    assert lag_budget() is None


def test_one_max_lag_instance_cannot_be_entered_twice_at_once():
    block = max_lag(1)
    assert isinstance(block, MaxLag)
    with block, pytest.raises(RuntimeError, match="already active"), block:
        pass


def test_max_lag_refuses_generator_functions():
    with pytest.raises(TypeError, match="generator"):

        @max_lag(1)
        def rows():
            yield 1


# -- max_lag: the routing ------------------------------------------------------


def measured(**replicas: tuple[float, float, bool]) -> None:
    """Publish lag as the monitor would: alias=(lag, seconds ago, in rotation)."""
    routing = runtime.current or runtime.load()
    routing.awaiting_monitor = False  # nothing to probe here; the test is the monitor
    now = time.monotonic()
    assert routing.monitor is not None
    routing.monitor.freshness = {
        alias: Freshness(lag, now - ago, in_rotation)
        for alias, (lag, ago, in_rotation) in replicas.items()
    }
    routing.balancer.set_weights(
        {alias: MEASURED["REPLICAS"][alias] for alias, (*_, rot) in replicas.items() if rot}
    )


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_tight_budget_takes_only_replicas_whose_lag_plus_the_probe_gap_fits(router):
    measured(replica_1=(0.2, 0, True), replica_2=(3.0, 0, True))
    with max_lag(0.2 + GAP + 0.1):
        assert {router.db_for_read(Author) for _ in range(8)} == {"replica_1"}
    with max_lag(0.2 + GAP - 0.1):
        assert {router.db_for_read(Author) for _ in range(8)} == {"default"}
    # Without a budget both serve: both are within MAX_LAG_SECONDS.
    assert {router.db_for_read(Author) for _ in range(8)} == {"replica_1", "replica_2"}


@pytest.fixture
def seeded_random():
    """The weighted random order of a loose budget, made repeatable: 20 unseeded
    picks missed one of two replicas about once in 300 runs."""
    state = random.getstate()
    random.seed(21)
    yield
    random.setstate(state)


@override_settings(REPLICA_ROUTER=MEASURED)
def test_lag_measured_long_ago_counts_the_time_since(router):
    # A stalled monitor: 0 lag measured 10 s ago may be 10 s of lag now.
    measured(replica_1=(0.0, 10, True), replica_2=(0.0, 10, True))
    with max_lag(9):
        assert router.db_for_read(Author) == "default"
    with max_lag(11):
        assert router.db_for_read(Author) in {"replica_1", "replica_2"}


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_loose_budget_reads_from_replicas_out_of_rotation_for_lag(router, seeded_random):
    measured(replica_1=(40.0, 0, False), replica_2=(300.0, 0, False))
    assert router.db_for_read(Author) == "default"  # nothing in rotation: FALLBACK
    with max_lag(600):
        assert {router.db_for_read(Author) for _ in range(20)} == {"replica_1", "replica_2"}
    with max_lag(60):
        assert {router.db_for_read(Author) for _ in range(20)} == {"replica_1"}
    with max_lag(4):  # tighter than MAX_LAG_SECONDS: rotation only
        assert router.db_for_read(Author) == "default"


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_loose_budget_spreads_over_rotation_and_lagging_replicas_by_weight(router):
    measured(replica_1=(40.0, 0, False), replica_2=(0.1, 0, True))
    with max_lag(600):
        served = Counter(router.db_for_read(Author) for _ in range(2000))
    # Weights 3:1, so about 1500 and 500.
    assert 1300 < served["replica_1"] < 1700
    assert served["replica_1"] + served["replica_2"] == 2000


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_replica_with_no_lag_figure_never_serves_a_budget(router):
    # Down, ejected or unmeasured replicas are absent from freshness.
    measured(replica_1=(0.0, 0, True))
    routing = runtime.current
    routing.balancer.set_weights({"replica_1": 3, "replica_2": 1})
    with max_lag(600):
        assert {router.db_for_read(Author) for _ in range(8)} == {"replica_1"}


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_without_health_checks_no_budget_can_be_promised(router):
    with max_lag(3600):
        assert router.db_for_read(Author) == "default"


@override_settings(REPLICA_ROUTER=MEASURED)
def test_use_primary_overrides_a_budget(router):
    measured(replica_1=(0.0, 0, True), replica_2=(0.0, 0, True))
    with max_lag(600), use_primary():
        assert router.db_for_read(Author) == "default"


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_context_keeps_its_replica_while_it_keeps_the_budget(router):
    measured(replica_1=(0.1, 0, True), replica_2=(0.1, 0, True))
    with causal() as state:
        first = router.db_for_read(Author)
        with max_lag(3):
            assert router.db_for_read(Author) == first
        measured(replica_1=(2.0, 0, True), replica_2=(2.0, 0, True))
        with max_lag(3):
            # It no longer keeps the budget, and another replica may be older
            # than what the context has read: the primary.
            assert router.db_for_read(Author) == "default"
        assert state.reading_from == "default"


@override_settings(REPLICA_ROUTER=MEASURED)
def test_a_context_reading_out_of_rotation_returns_to_the_primary_after_the_budget(router):
    measured(replica_1=(40.0, 0, False), replica_2=(40.0, 0, False))
    with causal():
        with max_lag(600):
            first = router.db_for_read(Author)
            assert first in {"replica_1", "replica_2"}
            assert router.db_for_read(Author) == first
        assert router.db_for_read(Author) == "default"


# -- tokens handed on ----------------------------------------------------------


def test_a_context_that_did_not_write_hands_on_the_token_it_reads_at():
    from replica_router import current_token

    def fresh_context():
        assert current_token() is None
        with causal("0/3000148"):
            # A job enqueued from here must see the write its own enqueuer made.
            assert current_token() == "0/3000148"
        with causal():
            assert current_token() is None

    # An empty context: earlier tests' writes outside any block stay in theirs.
    contextvars.Context().run(fresh_context)
