"""The weighted schedule: exact shares, even spreading, draining, thread safety."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import pytest

from replica_router.balancer import Balancer, WeightedSchedule


def picks(schedule: WeightedSchedule | Balancer, n: int) -> list[str | None]:
    return [schedule.pick() for _ in range(n)]


def longest_run(sequence: list[str | None], alias: str) -> int:
    return max(
        (len(list(group)) for key, group in itertools.groupby(sequence) if key == alias),
        default=0,
    )


def test_three_to_one_over_10000_picks_is_exact_and_spread():
    # A replica given 3x the weight must get exactly 3x the reads, and not in
    # bursts that would hammer it while the other idles.
    sequence = picks(WeightedSchedule(weights={"heavy": 3, "light": 1}), 10_000)
    assert Counter(sequence) == {"heavy": 7_500, "light": 2_500}
    assert longest_run(sequence, "heavy") <= 3
    assert longest_run(sequence, "light") == 1


def test_sequence_is_nginx_smooth_order():
    # nginx's documented example: weights a=5, b=1, c=1 give "a a b a c a a".
    schedule = WeightedSchedule(weights={"a": 5, "b": 1, "c": 1})
    assert schedule.sequence == ("a", "a", "b", "a", "c", "a", "a")
    assert picks(schedule, 14) == list(schedule.sequence) * 2


@pytest.mark.parametrize(
    "weights",
    [
        {"r1": 3, "r2": 1},
        {"r1": 5, "r2": 3, "r3": 2},
        {"r1": 7, "r2": 4, "r3": 1, "r4": 1},
        {"r1": 1, "r2": 1, "r3": 1},
    ],
)
def test_every_window_of_total_weight_has_exact_proportions(weights):
    total = sum(weights.values())
    sequence = picks(WeightedSchedule(weights=weights), total * 20)
    for start in range(len(sequence) - total + 1):
        assert Counter(sequence[start : start + total]) == weights, f"window at {start}"


def test_weight_zero_drains_a_replica():
    schedule = WeightedSchedule(weights={"r1": 2, "drained": 0, "r2": 1})
    sequence = picks(schedule, 3_000)
    assert "drained" not in sequence
    assert Counter(sequence) == {"r1": 2_000, "r2": 1_000}
    # A drained replica is still known: the monitor can bring it back.
    assert dict(schedule.weights) == {"r1": 2, "drained": 0, "r2": 1}


@pytest.mark.parametrize("weights", [{}, {"r1": 0}, {"r1": 0, "r2": 0}])
def test_empty_or_all_zero_picks_none(weights):
    schedule = WeightedSchedule(weights=weights)
    assert picks(schedule, 5) == [None] * 5
    assert schedule.period == 0


def test_weights_are_reduced_by_their_gcd():
    schedule = WeightedSchedule(weights={"r1": 300, "r2": 100, "r3": 200})
    assert schedule.period == 6
    assert Counter(schedule.sequence) == {"r1": 3, "r2": 1, "r3": 2}
    assert schedule.weights == {"r1": 300, "r2": 100, "r3": 200}


def test_schedule_is_deterministic():
    weights = {"r1": 4, "r2": 3, "r3": 2}
    assert picks(WeightedSchedule(weights=weights), 100) == picks(
        WeightedSchedule(weights=weights), 100
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"r1": -1}, "int >= 0"),
        ({"r1": 1.5}, "int >= 0"),
        ({"r1": True}, "int >= 0"),
        ({"": 1}, "non-empty str"),
        ({1: 1}, "non-empty str"),
        (["r1"], "mapping"),
    ],
)
def test_invalid_weights_raise_value_error(weights, message):
    with pytest.raises(ValueError, match=message):
        WeightedSchedule(weights=weights)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        WeightedSchedule({"r1": 1})  # type: ignore[misc]


def test_huge_period_is_refused():
    with pytest.raises(ValueError, match="smaller weights"):
        WeightedSchedule(weights={"r1": 1_000_000, "r2": 1})


def test_concurrent_picks_from_8_threads_keep_exact_counts():
    # Under load many threads pick at once; a racy schedule would lose or
    # duplicate picks and skew the shares.
    balancer = Balancer(weights={"heavy": 3, "light": 1})
    threads_n, per_thread = 8, 10_000
    counters = [Counter() for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)

    def work(counter: Counter) -> None:
        barrier.wait()
        pick = balancer.pick
        for _ in range(per_thread):
            counter[pick()] += 1

    threads = [threading.Thread(target=work, args=(c,)) for c in counters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counters, Counter())
    assert total == {"heavy": 60_000, "light": 20_000}


def test_balancer_swaps_weights_atomically():
    balancer = Balancer(weights={"r1": 1, "r2": 1})
    old_schedule = balancer.schedule
    balancer.set_weights({"r1": 0, "r2": 1})
    assert balancer.schedule is not old_schedule
    assert picks(balancer, 10) == ["r2"] * 10
    assert balancer.weights == {"r1": 0, "r2": 1}


def test_balancer_keeps_old_schedule_on_invalid_weights():
    balancer = Balancer(weights={"r1": 1})
    with pytest.raises(ValueError):
        balancer.set_weights({"r1": -5})
    assert picks(balancer, 3) == ["r1"] * 3


def test_swap_under_concurrent_picks_never_yields_a_removed_alias():
    # The monitor swaps weights while requests pick: after the swap no pick may
    # return the replica that was taken out.
    balancer = Balancer(weights={"r1": 1, "r2": 1})
    swapped = threading.Event()
    stop = threading.Event()
    after_swap: list[list[str | None]] = [[] for _ in range(4)]

    def work(out: list[str | None]) -> None:
        while not stop.is_set():
            seen_swap = swapped.is_set()
            alias = balancer.pick()
            if seen_swap:
                out.append(alias)

    threads = [threading.Thread(target=work, args=(out,)) for out in after_swap]
    for t in threads:
        t.start()
    balancer.set_weights({"r1": 0, "r2": 1})
    swapped.set()
    while min(len(out) for out in after_swap) < 1_000:
        threading.Event().wait(0.001)
    stop.set()
    for t in threads:
        t.join()
    assert {alias for out in after_swap for alias in out} == {"r2"}
