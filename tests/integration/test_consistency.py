"""Monotonic reads (issue 14) against a replica that really lags.

The failure guarded against: one page reads the same data several times, the
reads are spread over replicas of different ages, and the page shows a newer
value and then an older one, as if time ran backwards. Here two replicas are in
rotation, one current and one applying WAL 1.5 s late (both well under
MAX_LAG_SECONDS, so the health monitor rightly keeps both), while a counter is
bumped on the primary about every 10 ms; each request reads the counter six
times. Before monotonic reads, every request went back.

The scenario lives in testbed/monotonic.py; bench/bench_monotonic.py measures
the same thing with the setting on and off.
"""

from __future__ import annotations

import pytest
from django.db import connections

from replica_router.testing.cluster import Cluster
from testbed.monotonic import (
    DELAYED,
    Outcome,
    configured,
    in_causal_blocks,
    lagging_counter,
    measure,
    through_pinned_requests,
    through_requests,
    went_back,
)

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)
#: Requests (or causal() blocks) per test: the issue's figure; a run takes seconds.
REQUESTS = 150


@pytest.fixture
def counter(replica_cluster: Cluster, delay_replica):
    """The pk of a counter bumped on the primary, with replica_1 1.5 s behind."""
    dbname = connections["default"].settings_dict["NAME"]
    with lagging_counter(replica_cluster, dbname, delay_replica) as pk:
        yield pk


def _assert_the_scenario_held(outcome: Outcome) -> None:
    # Both replicas served the whole run: the lagging one was not taken out of
    # rotation (which would make every read monotonic for the wrong reason).
    assert outcome.replicas_stayed_in_rotation, (
        outcome.rotation_before,
        outcome.rotation_after,
        outcome.state_changes,
    )
    assert len(outcome.groups) == REQUESTS


@db
def test_no_request_sees_the_counter_go_back(counter):
    with configured():
        outcome = measure(counter, through_requests(counter, REQUESTS))
    _assert_the_scenario_held(outcome)
    assert outcome.went_back == 0, (
        f"{outcome.went_back} of {REQUESTS} requests saw the counter go back; "
        f"served by {dict(outcome.served)}; first such request: "
        f"{next(g for g in outcome.groups if went_back([value for value, _ in g]))}"
    )


@db
def test_requests_go_back_with_monotonic_reads_off(counter):
    """The same scenario with MONOTONIC_READS off: proves the test above can fail."""
    with configured(MONOTONIC_READS=False):
        outcome = measure(counter, through_requests(counter, REQUESTS))
    _assert_the_scenario_held(outcome)
    assert outcome.went_back > 0
    assert {DELAYED, "replica_2"} <= set(outcome.served)


@db
def test_monotonic_requests_still_read_mostly_from_replicas(counter):
    """Monotonic must not be bought by sending the reads to the primary.

    Reading on from the replica a request started on, or from any replica at
    least as fresh, keeps every read on a replica; at most the odd read may
    need the primary, so more than half of them must be replica reads.
    """
    with configured():
        outcome = measure(counter, through_requests(counter, REQUESTS))
    _assert_the_scenario_held(outcome)
    assert outcome.replica_share > 0.5, dict(outcome.served)


@db
def test_no_causal_block_sees_the_counter_go_back(counter):
    """A job's ``with causal():`` block gets the same guarantee as a request."""
    with configured():
        outcome = measure(counter, in_causal_blocks(counter, REQUESTS))
    _assert_the_scenario_held(outcome)
    assert outcome.went_back == 0, (
        f"{outcome.went_back} of {REQUESTS} causal() blocks saw the counter go back; "
        f"served by {dict(outcome.served)}"
    )
    assert outcome.replica_share > 0.5, dict(outcome.served)


@db
def test_a_pinned_client_never_goes_back_across_its_requests(counter):
    """For PIN_SECONDS after a client writes, its requests read on from the
    replica its last request read from (the pin cookie names it)."""
    with configured(PIN_SECONDS=600.0):
        outcome = measure(counter, through_pinned_requests(counter, REQUESTS))
    assert outcome.replicas_stayed_in_rotation, outcome.state_changes
    everything = [value for group in outcome.groups for value, _ in group]
    assert not went_back(everything), (
        f"requests went back; served by {dict(outcome.served)}; "
        f"first values: {[group[0] for group in outcome.groups[:8]]}"
    )
    assert outcome.replica_share > 0.5, dict(outcome.served)
