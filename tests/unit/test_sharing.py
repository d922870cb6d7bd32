"""The shared health stores: the lease, the published document, failure reports.

Pure logic on a temporary directory and on Django's local-memory cache (which
has the same add/get/set semantics as Redis for one process), on a clock the
tests move by hand; the fleet of real gunicorn workers sharing them is in
tests/integration/test_fleet.py.
"""

from __future__ import annotations

import threading

import pytest
from django.core.cache import caches
from django.test import override_settings

from replica_router.health.sharing import (
    REPORT_SECONDS,
    CacheStore,
    FileStore,
    Guarded,
    Holder,
    StoreUnavailable,
    cluster_key,
    store_for,
)
from testbed.polling import wait_for

A = Holder("web-1", 101)
B = Holder("web-2", 202)
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


class Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["file", "cache"])
def store(request, tmp_path, clock):
    if request.param == "file":
        yield FileStore(tmp_path / "health", clock=clock)
    else:
        with override_settings(CACHES=LOCMEM):
            caches["default"].clear()
            yield CacheStore("default", "k1", clock=clock)


def test_one_holder_at_a_time(store):
    assert store.claim(A, 60)[0] is True
    mine, lease = store.claim(B, 60)
    assert mine is False and lease["holder"] == A.as_dict()
    # Renewing keeps the time the holder took it.
    since = lease["since"]
    assert store.claim(A, 60)[0] is True
    assert store.claim(A, 60)[1]["since"] == since


def test_an_expired_lease_goes_to_the_next_claimant(store, clock):
    assert store.claim(A, 1)[0] is True
    clock.advance(0.9)
    assert store.claim(B, 60)[0] is False
    clock.advance(0.2)  # the holder stopped renewing (killed, or stopped)
    assert store.lease() is None
    assert store.claim(B, 60)[0] is True
    # The old holder, back, finds it taken and stands down.
    assert store.claim(A, 60)[0] is False


def test_a_lease_shorter_than_a_second_expires_in_time(store, clock):
    # Django's Redis cache keeps keys for whole seconds: the record's own expiry counts.
    assert store.claim(A, 0.3)[0] is True
    assert store.claim(B, 60)[0] is False
    clock.advance(0.4)
    assert store.claim(B, 60)[0] is True


def test_a_lease_records_wall_clock_times(store, clock):
    start = clock.now
    assert store.claim(A, 5)[1] == {"holder": A.as_dict(), "since": start, "expires": start + 5}
    clock.advance(2)
    # Renewing moves the expiry and keeps the time the holder took it.
    assert store.claim(A, 5)[1] == {"holder": A.as_dict(), "since": start, "expires": start + 7}


def test_documents_and_reports_round_trip(store, clock):
    assert store.read() is None
    store.publish({"version": 1, "nodes": []})
    assert store.read() == {"version": 1, "nodes": []}
    store.report("replica_1", "connection refused")
    assert store.reports(["replica_1", "replica_2"]) == {
        "replica_1": (clock.now, "connection refused")
    }


def test_a_report_lapses_after_report_seconds(store, clock):
    store.report("replica_1", "connection refused")
    clock.advance(REPORT_SECONDS)
    assert list(store.reports(["replica_1"])) == ["replica_1"]
    clock.advance(0.1)
    assert store.reports(["replica_1"]) == {}


def test_a_torn_file_reads_as_absent(tmp_path):
    store = FileStore(tmp_path)
    store.publish({"version": 1})
    (tmp_path / "snapshot.json").write_text('{"version": ')
    assert store.read() is None
    assert store.claim(A, 60)[0] is True  # a torn lease is no lease


def test_the_cluster_key_follows_the_addresses():
    primary = {"HOST": "db", "PORT": 5432, "NAME": "app"}
    replicas = {"r1": {"HOST": "r1", "PORT": 5432, "NAME": "app"}}
    key = cluster_key(primary, replicas)
    assert key == cluster_key(dict(primary), dict(replicas))
    assert key != cluster_key({**primary, "NAME": "test_app"}, replicas)


def test_store_for_each_mode(tmp_path, clock):
    assert store_for("process", key="k", cache="default", directory=None) is None
    host = store_for("host", key="k", cache="default", directory=str(tmp_path), clock=clock)
    assert isinstance(host, FileStore) and host.directory == tmp_path and host.clock is clock
    cache = store_for("cache", key="k", cache="c", directory=None, clock=clock)
    assert isinstance(cache, CacheStore) and cache.clock is clock


class Hanging:
    """A store whose calls block until released, like a frozen Redis."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self):
        self.release.wait(10)
        return {}

    def fail(self):
        raise ConnectionError("Connection refused")


def test_a_hanging_store_fails_within_the_deadline_and_piles_up_nothing():
    # The deadline is a thread's wait, so it runs on the real clock; it is short.
    hanging = Hanging()
    guarded = Guarded(hanging, deadline=0.05)
    with pytest.raises(StoreUnavailable, match="no answer within 0.05s"):
        guarded.call(hanging.read)
    # While that call still hangs, the next fails at once.
    with pytest.raises(StoreUnavailable, match="has not returned"):
        guarded.call(hanging.read)
    hanging.release.set()
    wait_for(lambda: _answers(guarded, hanging.read), timeout=5)
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        guarded.call(hanging.fail)
    guarded.close()


def _answers(guarded: Guarded, method) -> bool:
    try:
        return guarded.call(method) == {}
    except StoreUnavailable:
        return False


def test_a_forked_child_calls_the_store_on_a_thread_of_its_own():
    hanging = Hanging()
    guarded = Guarded(hanging, deadline=0.05)
    with pytest.raises(StoreUnavailable):
        guarded.call(hanging.read)  # the parent's thread now hangs in it
    guarded.after_fork()  # what the at-fork hook does in a child
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        guarded.call(hanging.fail)  # not refused as "has not returned"
    hanging.release.set()
    guarded.close()


def _ids(messages):
    return [m.id for m in messages]


def test_a_cache_that_does_not_exist_is_an_error():
    from replica_router.checks import check_health_sharing

    with override_settings(
        CACHES=LOCMEM,
        REPLICA_ROUTER={"REPLICAS": ["replica_1"], "HEALTH_SHARING": "cache", "HEALTH_CACHE": "x"},
    ):
        messages = check_health_sharing()
    assert _ids(messages) == ["replica_router.E011"]
    assert "'default'" in messages[0].hint


def test_a_cache_each_process_keeps_to_itself_is_a_warning():
    from replica_router.checks import check_health_sharing

    router = {"REPLICAS": ["replica_1"], "HEALTH_SHARING": "cache"}
    with override_settings(CACHES=LOCMEM, REPLICA_ROUTER=router):
        assert _ids(check_health_sharing()) == ["replica_router.W006"]
    redis = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache"}}
    with override_settings(CACHES=redis, REPLICA_ROUTER=router):
        assert check_health_sharing() == []
    with override_settings(CACHES=LOCMEM, REPLICA_ROUTER={**router, "HEALTH_SHARING": "host"}):
        assert check_health_sharing() == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("HEALTH_SHARING", "cluster"), ("HEALTH_CACHE", ""), ("HEALTH_DIR", 3)],
)
def test_bad_sharing_settings_are_reported(key, value):
    from replica_router.conf import parse_settings

    _, problems = parse_settings({"REPLICAS": ["replica_1"], key: value})
    assert [p.id for p in problems] == ["replica_router.E009"]
    assert key in problems[0].message
