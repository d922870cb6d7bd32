"""The shared health stores: the lease, the published document, failure reports.

Pure logic on a temporary directory and on Django's local-memory cache (which
has the same add/get/set semantics as Redis for one process); the fleet of
real gunicorn workers sharing them is in tests/integration/test_fleet.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache import caches
from django.test import override_settings

from replica_router.health.sharing import (
    CacheStore,
    FileStore,
    Guarded,
    Holder,
    StoreUnavailable,
    cluster_key,
    store_for,
)

A = Holder("web-1", 101)
B = Holder("web-2", 202)
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(params=["file", "cache"])
def store(request, tmp_path):
    if request.param == "file":
        yield FileStore(tmp_path / "health")
    else:
        with override_settings(CACHES=LOCMEM):
            caches["default"].clear()
            yield CacheStore("default", "k1")


def test_one_holder_at_a_time(store):
    assert store.claim(A, 60)[0] is True
    mine, lease = store.claim(B, 60)
    assert mine is False and lease["holder"] == A.as_dict()
    # Renewing keeps the time the holder took it.
    since = lease["since"]
    assert store.claim(A, 60)[0] is True
    assert store.claim(A, 60)[1]["since"] == since


def test_an_expired_lease_goes_to_the_next_claimant(store):
    assert store.claim(A, 1)[0] is True
    time.sleep(1.1)  # the holder stopped renewing (killed, or stopped)
    assert store.claim(B, 60)[0] is True
    # The old holder, back, finds it taken and stands down.
    assert store.claim(A, 60)[0] is False


def test_a_lease_shorter_than_a_second_expires_in_time(store):
    # Django's Redis cache keeps keys for whole seconds: the record's own expiry counts.
    assert store.claim(A, 0.3)[0] is True
    assert store.claim(B, 60)[0] is False
    time.sleep(0.4)
    assert store.claim(B, 60)[0] is True


def test_documents_and_reports_round_trip(store):
    assert store.read() is None
    store.publish({"version": 1, "nodes": []})
    assert store.read() == {"version": 1, "nodes": []}
    store.report("replica_1", "connection refused")
    reports = store.reports(["replica_1", "replica_2"])
    assert list(reports) == ["replica_1"]
    assert reports["replica_1"][1] == "connection refused"
    assert time.time() - reports["replica_1"][0] < 60


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


def test_store_for_each_mode(tmp_path):
    assert store_for("process", key="k", cache="default", directory=None) is None
    host = store_for("host", key="k", cache="default", directory=str(tmp_path))
    assert isinstance(host, FileStore) and host.directory == tmp_path
    assert isinstance(store_for("cache", key="k", cache="c", directory=None), CacheStore)


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
    hanging = Hanging()
    guarded = Guarded(hanging, deadline=0.2)
    with pytest.raises(StoreUnavailable, match="no answer within 0.2s"):
        guarded.call(hanging.read)
    # While that call still hangs, the next fails at once.
    with pytest.raises(StoreUnavailable, match="has not returned"):
        guarded.call(hanging.read)
    hanging.release.set()
    time.sleep(0.05)
    assert guarded.call(hanging.read) == {}
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        guarded.call(hanging.fail)
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
