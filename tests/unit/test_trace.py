"""The routing trace: each query gets the decision that sent it where it ran.

What it guards against: a debug panel that credits a query with a decision
made for another alias or for an earlier query, that calls a query routed
when code chose the connection itself, that misses a failover, or that
breaks the metrics it sits in front of. No database: decisions come from the
router itself (no I/O to route) and queries from a stand-in execute.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from django.test import override_settings

from replica_router import ReplicaRouter, runtime, use_primary
from replica_router.context import CausalState, causal_state
from replica_router.lsn import REPLAY_LSN
from replica_router.metrics import Counters
from replica_router.trace import (
    DIRECT,
    FAILOVER,
    Trace,
    Tracer,
    _record_query,
    active_trace,
    install,
    tracing,
)
from testbed.testapp.models import Author

NO_MONITOR = {"REPLICAS": {"replica_1": 1, "replica_2": 1}, "HEALTH_CHECKS": False}


@pytest.fixture(autouse=True)
def _routing_of_its_own():
    # Leaving the block builds the routing afresh: no Tracer is left installed
    # in the other tests' routing.
    with override_settings(REPLICA_ROUTER=NO_MONITOR):
        yield


def test_a_query_takes_the_latest_decision_for_its_alias_since_its_last_query():
    trace = Trace()
    trace.decide("replica_1", "replica")
    trace.decide("default", "write")
    trace.decide("replica_1", "max_lag")  # decided again before the query: this one
    assert trace.record(alias="replica_1", sql="SELECT 1", seconds=0.001).reason == "max_lag"
    # The decision was taken; a second query on the alias has none.
    assert trace.record(alias="replica_1", sql="SELECT 2", seconds=0.001).reason == DIRECT
    assert trace.record(alias="default", sql="INSERT", seconds=0.001).reason == "write"
    assert [q.index for q in trace.queries] == [1, 2, 3]


def test_a_query_no_decision_explains_is_direct_and_the_routers_own_are_named():
    trace = Trace()
    plain = trace.record(alias="replica_2", sql="SELECT 1", seconds=0)
    assert (plain.reason, plain.note) == (DIRECT, None)
    check = trace.record(alias="replica_2", sql=f"SELECT {REPLAY_LSN}", seconds=0)
    assert check.reason == DIRECT
    assert check.note is not None and "replayed" in check.note
    savepoint = trace.record(alias="default", sql='SAVEPOINT "s1"', seconds=0)
    assert savepoint.note == "transaction control of atomic()"


def test_a_query_a_stand_in_ran_is_a_failover_from_the_alias_it_was_routed_to():
    trace = Trace()
    trace.decide("replica_1", "replica")
    trace.note_failover("replica_1", "replica_2")
    query = trace.record(alias="replica_1", sql="SELECT 1", seconds=0, borrowed_from="replica_2")
    assert (query.alias, query.reason) == ("replica_2", FAILOVER)
    assert (query.failover_from, query.routed_for) == ("replica_1", "replica")
    assert trace.failovers == [("replica_1", "replica_2")]
    # The connection went back to its own server: the next query is not a failover.
    trace.decide("replica_1", "replica")
    assert trace.record(alias="replica_1", sql="SELECT 2", seconds=0).reason == "replica"


def test_a_failover_the_engine_reported_marks_the_next_query_even_if_given_back():
    trace = Trace()
    trace.decide("replica_1", "replica")
    trace.note_failover("replica_1", "default")
    query = trace.record(alias="replica_1", sql="SELECT 1", seconds=0)
    assert (query.alias, query.reason, query.failover_from) == ("default", FAILOVER, "replica_1")


def test_the_execute_wrapper_records_the_alias_the_time_and_a_failure():
    connection = SimpleNamespace(alias="replica_1", borrowed_from=None)
    context = {"connection": connection}

    def execute(sql, params, many, context):
        if sql == "BOOM":
            raise ValueError("no")
        return "rows"

    with tracing(watch=False) as trace:
        trace.decide("replica_1", "replica")
        assert _record_query(execute, "SELECT 1", (), False, context) == "rows"
        with pytest.raises(ValueError):
            _record_query(execute, "BOOM", (), False, context)
    first, failed = trace.queries
    assert (first.alias, first.reason, first.error) == ("replica_1", "replica", None)
    assert first.seconds >= 0
    assert (failed.reason, failed.error) == (DIRECT, "ValueError")
    # Outside a trace the wrapper only runs the query.
    assert _record_query(execute, "SELECT 1", (), False, context) == "rows"
    assert len(trace.queries) == 2


def test_the_router_reports_each_decision_to_the_trace():
    router = ReplicaRouter()
    with tracing(watch=False) as trace:
        replica = router.db_for_read(Author)
        assert trace.record(alias=replica, sql="SELECT", seconds=0).reason == "replica"
        with use_primary():
            router.db_for_read(Author)
        assert trace.record(alias="default", sql="SELECT", seconds=0).reason == "use_primary"
        router.db_for_write(Author)
        assert trace.record(alias="default", sql="INSERT", seconds=0).reason == "write"
    with (
        override_settings(REPLICA_ROUTER={**NO_MONITOR, "REPLICAS": {}}),
        tracing(watch=False) as trace,
    ):
        router.db_for_read(Author)
        assert trace.record(alias="default", sql="SELECT", seconds=0).reason == "no_replicas"


def test_the_trace_keeps_the_causal_state_the_reads_ran_under():
    state = CausalState(min_lsn=5)
    reset = causal_state.set(state)
    try:
        with tracing(watch=False) as trace:
            ReplicaRouter().db_for_read(Author)
    finally:
        causal_state.reset(reset)
    assert trace.state is state


def test_install_is_idempotent_and_follows_a_rebuilt_routing():
    tracer = install()
    assert runtime.get_counters() is tracer
    assert install() is tracer
    with override_settings(REPLICA_ROUTER={**NO_MONITOR, "REPLICAS": {"replica_1": 1}}):
        again = install()
        assert again is not tracer and runtime.get_counters() is again
        assert set(again.reads_on_replica) == {"replica_1"}


def test_the_tracer_has_the_counters_interface_and_forwards_to_them():
    """The router calls whatever Counters has; a Tracer missing one would break requests."""
    counters = Counters(primary="default", replicas=["replica_1"])
    tracer = Tracer(primary="default", replicas=["replica_1"], wrapped=counters)
    public = {name for name in dir(Counters) if not name.startswith("_")} | set(Counters.__slots__)
    assert {name for name in public if not hasattr(tracer, name)} == set()

    calls = []
    fake = SimpleNamespace(
        reads_use_primary=lambda: calls.append("use_primary") or 0,
        reads_primary_only=lambda: 0,
        reads_in_transaction=lambda: 0,
        reads_pinned=lambda: 0,
        reads_on_replica={"replica_1": lambda: calls.append("replica") or 0},
        writes=lambda: calls.append("write") or 0,
        pins_set=lambda: 0,
        pins_honoured=lambda: 0,
        read=lambda alias, reason: calls.append(f"read {alias} {reason}"),
        failover=lambda a, b: calls.append(f"failover {a} {b}"),
        recovery_conflict=lambda alias: calls.append(f"conflict {alias}"),
    )
    tracer = Tracer(primary="default", replicas=["replica_1"], wrapped=fake)
    with tracing(watch=False) as trace:
        tracer.reads_use_primary()
        tracer.reads_on_replica["replica_1"]()
        tracer.writes()
        tracer.read("default", "fallback")
        tracer.failover("replica_1", "default")
        tracer.recovery_conflict("replica_1")
    assert calls == [
        "use_primary",
        "replica",
        "write",
        "read default fallback",
        "failover replica_1 default",
        "conflict replica_1",
    ]
    assert trace.failovers == [("replica_1", "default")]
    assert trace.conflicts == ["replica_1"]
    # With METRICS off there is nothing to forward to; it still records.
    bare = Tracer(primary="default", replicas=["replica_1"], wrapped=None)
    with tracing(watch=False) as trace:
        assert bare.reads_on_replica["replica_1"]() == 0
        bare.read("default", "migrate")
    assert trace.record(alias="replica_1", sql="SELECT", seconds=0).reason == "replica"
    assert trace.record(alias="default", sql="SELECT", seconds=0).reason == "migrate"


def test_blocks_nest_and_leave_no_trace_active():
    assert active_trace() is None
    with tracing(watch=False) as outer:
        with tracing(watch=False) as inner:
            assert active_trace() is inner
        assert active_trace() is outer
    assert active_trace() is None


def test_concurrent_tasks_each_have_their_own_trace():
    tracer = Tracer(primary="default", replicas=["replica_1", "replica_2"], wrapped=None)

    async def request(alias: str) -> Trace:
        with tracing(watch=False) as trace:
            for _ in range(3):
                tracer.reads_on_replica[alias]()
                await asyncio.sleep(0)
                trace.record(alias=alias, sql="SELECT", seconds=0)
        return trace

    async def both() -> list[Trace]:
        return list(await asyncio.gather(request("replica_1"), request("replica_2")))

    for trace, alias in zip(asyncio.run(both()), ["replica_1", "replica_2"], strict=True):
        assert {(q.alias, q.reason) for q in trace.queries} == {(alias, "replica")}


def test_watching_adds_the_recorder_once_and_stopping_removes_it():
    from django.db import connections

    block = tracing()
    block.start()
    try:
        block.watch()  # again: idempotent
        for connection in connections.all():
            assert connection.execute_wrappers.count(_record_query) == 1
    finally:
        block.stop()
    assert all(_record_query not in c.execute_wrappers for c in connections.all())
