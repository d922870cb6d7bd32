"""Routing decisions that need no database: the router does no I/O to make them.

The end-to-end behaviour against real standbys is in tests/integration/test_router.py; these
tests pin down each rule and its edge cases quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import types
from collections import Counter

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections
from django.db import router as django_router
from django.test import override_settings
from django.test.utils import isolate_apps

import replica_router
from replica_router import NoReplicaAvailable, ReplicaRouter, transactions, use_primary
from replica_router.runtime import get_balancer
from testbed.testapp.models import Author, Book

# Pure routing rules: the health monitor (tested against the cluster in
# test_health.py) is off, so nothing here depends on probes.
WEIGHTED = {"REPLICAS": {"replica_1": 3, "replica_2": 1}, "HEALTH_CHECKS": False}


@pytest.fixture
def router():
    return ReplicaRouter()


def reads(router, model, n):
    return Counter(router.db_for_read(model) for _ in range(n))


@contextlib.contextmanager
def atomic_by_hand(wrapper):
    """What atomic() does to a wrapper, with no server: autocommit off (which
    the failover engine counts, see replica_router.transactions), then the
    block marked; and the reverse."""
    wrapper.connection = types.SimpleNamespace(autocommit=True)
    wrapper._set_autocommit(False)
    wrapper.in_atomic_block = True
    try:
        yield
    finally:
        wrapper.in_atomic_block = False
        wrapper._set_autocommit(True)
        wrapper.connection = None


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_reads_follow_the_weights_and_writes_go_to_the_primary(router):
    assert reads(router, Author, 400) == {"replica_1": 300, "replica_2": 100}
    assert router.db_for_write(Author) == "default"


@override_settings(REPLICA_ROUTER=WEIGHTED, DATABASE_ROUTERS=["replica_router.ReplicaRouter"])
def test_django_uses_the_router_from_its_dotted_path():
    assert django_router.db_for_read(Author) in {"replica_1", "replica_2"}
    assert django_router.db_for_write(Author) == "default"


@override_settings(
    REPLICA_ROUTER={"PRIMARY": "replica_2", "REPLICAS": ["replica_1"], "HEALTH_CHECKS": False}
)
def test_custom_primary_alias(router):
    assert router.db_for_write(Author) == "replica_2"
    assert reads(router, Author, 3) == {"replica_1": 3}
    with use_primary():
        assert router.db_for_read(Author) == "replica_2"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_use_primary_block_and_decorator(router):
    with use_primary():
        assert reads(router, Author, 10) == {"default": 10}

    @use_primary
    def read():
        return router.db_for_read(Book)

    assert read() == "default"
    # And only while active.
    assert router.db_for_read(Author) != "default"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_use_primary_in_one_asyncio_task_does_not_pin_another(router):
    async def main():
        gate = asyncio.Event()

        @use_primary
        async def pinned():
            await gate.wait()
            return router.db_for_read(Author)

        async def unpinned():
            await gate.wait()
            return router.db_for_read(Author)

        tasks = [asyncio.create_task(pinned()), asyncio.create_task(unpinned())]
        await asyncio.sleep(0)  # both tasks are now waiting at the gate
        gate.set()
        return await asyncio.gather(*tasks)

    pinned_alias, unpinned_alias = asyncio.run(main())
    assert pinned_alias == "default"
    assert unpinned_alias in {"replica_1", "replica_2"}


@pytest.mark.parametrize(
    ("primary_only", "to_primary", "to_replica"),
    [
        (["testapp"], [Author, Book], [Session, User]),
        (["testapp.Author"], [Author], [Book, Session]),
        (["TestApp.AUTHOR"], [Author], [Book]),
        (["sessions"], [Session], [Author, User]),
        # The table behind User.groups follows User.
        (["auth.User"], [User, User.groups.through], [Author]),
    ],
)
def test_primary_only(router, primary_only, to_primary, to_replica):
    with override_settings(REPLICA_ROUTER={**WEIGHTED, "PRIMARY_ONLY": primary_only}):
        for model in to_primary:
            assert reads(router, model, 4) == {"default": 4}, model
        for model in to_replica:
            assert "default" not in reads(router, model, 4), model


@isolate_apps("testbed.testapp")
def test_primary_only_covers_proxies_of_the_model(router):
    class AuthorProxy(Author):
        class Meta:
            proxy = True
            app_label = "testapp"

    with override_settings(REPLICA_ROUTER={**WEIGHTED, "PRIMARY_ONLY": ["testapp.author"]}):
        assert router.db_for_read(AuthorProxy) == "default"


def test_primary_only_decision_is_cached_per_settings(router):
    # The decision is cached per model class; a settings change must not reuse it.
    with override_settings(REPLICA_ROUTER={**WEIGHTED, "PRIMARY_ONLY": ["testapp"]}):
        assert router.db_for_read(Author) == "default"
    with override_settings(REPLICA_ROUTER=WEIGHTED):
        assert router.db_for_read(Author) != "default"


@pytest.mark.parametrize("fallback", ["primary", "least_lagged", "error"])
def test_no_replicas_configured_reads_from_primary(router, fallback):
    with override_settings(REPLICA_ROUTER={"FALLBACK": fallback}):
        assert reads(router, Author, 3) == {"default": 3}


@override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_1": 0, "replica_2": 0}})
def test_all_replicas_drained_falls_back_to_primary(router):
    assert reads(router, Author, 3) == {"default": 3}


@override_settings(
    REPLICA_ROUTER={"REPLICAS": {"replica_1": 0, "replica_2": 0}, "FALLBACK": "error"}
)
def test_all_replicas_drained_with_fallback_error_raises(router):
    with pytest.raises(NoReplicaAvailable, match="FALLBACK is 'error'") as excinfo:
        router.db_for_read(Author)
    # Existing "except OperationalError" clauses still catch it.
    assert isinstance(excinfo.value, OperationalError)
    # use_primary needs no replica, so it still works.
    with use_primary():
        assert router.db_for_read(Author) == "default"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_the_balancer_is_the_seam_for_taking_replicas_out(router):
    # The health monitor takes a replica out by swapping the weights.
    get_balancer().set_weights({"replica_1": 0, "replica_2": 1})
    assert reads(router, Author, 5) == {"replica_2": 5}


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_invalid_weights_swap_keeps_routing(router):
    with pytest.raises(ValueError):
        get_balancer().set_weights({"replica_1": -1})
    assert reads(router, Author, 4) == {"replica_1": 3, "replica_2": 1}


@override_settings(REPLICA_ROUTER={"REPLICAS": "replica_1"})
def test_invalid_settings_fail_the_read_loudly(router):
    with pytest.raises(ImproperlyConfigured, match="Wrap a single alias in a list"):
        router.db_for_read(Author)


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_in_atomic_block_is_per_thread(router):
    # atomic() sets in_atomic_block on this thread's primary wrapper. Setting it
    # by hand (no connection is opened) checks that the router reads this
    # thread's wrapper, not another thread's, even after caching it.
    wrapper = connections["default"]
    assert router.db_for_read(Author) != "default"  # caches this thread's wrapper
    other_thread: list[str] = []
    with atomic_by_hand(wrapper):
        assert reads(router, Author, 4) == {"default": 4}
        worker = threading.Thread(target=lambda: other_thread.append(router.db_for_read(Author)))
        worker.start()
        worker.join()
    assert other_thread and other_thread[0] in {"replica_1", "replica_2"}
    assert router.db_for_read(Author) != "default"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_the_engine_counts_the_primarys_connections_with_autocommit_off():
    before = transactions.open_count
    primary, replica = connections["default"], connections["replica_1"]
    for wrapper in (primary, replica):
        wrapper.connection = types.SimpleNamespace(autocommit=True)
    try:
        primary._set_autocommit(False)
        primary._set_autocommit(False)  # once per connection, however often
        replica._set_autocommit(False)  # a replica's are not counted
        assert transactions.open_count == before + 1
        primary._set_autocommit(True)
        primary._set_autocommit(True)
        replica._set_autocommit(True)
        assert transactions.open_count == before
    finally:
        primary.connection = replica.connection = None


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_with_no_transaction_counted_the_router_does_not_look(router):
    # What the count saves: a block marked with autocommit left on (nothing
    # Django does) is not seen. It shows the count is what the router reads.
    wrapper = connections["default"]
    assert transactions.open_count == 0
    wrapper.in_atomic_block = True
    try:
        assert "default" not in reads(router, Author, 4)
    finally:
        wrapper.in_atomic_block = False


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_a_primary_on_djangos_own_engine_is_always_looked_at(router):
    from django.conf import settings

    databases = {alias: dict(value) for alias, value in settings.DATABASES.items()}
    databases["default"]["ENGINE"] = "django.db.backends.postgresql"
    wrapper = connections["default"]  # the routing reads the engine from the settings
    assert transactions.open_count == 0
    # Django warns that overriding DATABASES does not reconnect: nothing connects here.
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES=databases),
    ):
        wrapper.in_atomic_block = True
        try:
            assert reads(router, Author, 4) == {"default": 4}
        finally:
            wrapper.in_atomic_block = False


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_allow_relation(router):
    def obj(alias):
        author = Author(name="x")
        author._state.db = alias
        return author

    assert router.allow_relation(obj("default"), obj("replica_1")) is True
    assert router.allow_relation(obj("replica_2"), obj("replica_1")) is True
    assert router.allow_relation(obj("default"), obj("other")) is None
    assert router.allow_relation(obj(None), obj("default")) is None


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_allow_migrate(router):
    assert router.allow_migrate("default", "testapp") is True
    assert router.allow_migrate("replica_1", "testapp", model_name="author") is False
    assert router.allow_migrate("replica_2", "auth") is False
    assert router.allow_migrate("analytics", "testapp") is None


@override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_1": 0}})
def test_allow_migrate_refuses_drained_replicas_too(router):
    assert router.allow_migrate("replica_1", "testapp") is False


def test_public_api():
    assert sorted(replica_router.__all__) == [
        "NoReplicaAvailable",
        "ReplicaRouter",
        "causal",
        "current_token",
        "max_lag",
        "reset_state",
        "use_primary",
    ]
    assert replica_router.ReplicaRouter is ReplicaRouter
    with pytest.raises(AttributeError):
        replica_router.nothing_here  # noqa: B018


def test_importing_the_package_stays_light():
    # replica_router is imported while INSTALLED_APPS load, before the app
    # registry is ready: it must not import Django's ORM, nor our router.
    code = (
        "import sys, replica_router, replica_router.apps; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('django.db.models', 'replica_router.router', 'replica_router.runtime'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- databases outside the cluster -------------------------------------------
# A project's second database ("other") is not the router's: Django decides
# for it as it would with no router. Before, an object fetched from "other" had
# its related objects read from the cluster, and saving a relation between two
# objects on "other" raised "the current database router prevents this relation".


def _on(db, obj):
    obj._state.db = db
    return obj


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_an_instance_hint_outside_the_cluster_is_left_to_django(router):
    other = _on("other", Author(name="elsewhere"))
    assert router.db_for_read(Book, instance=other) is None
    assert router.db_for_write(Book, instance=other) is None
    # ...so Django's own rule applies: the hint's database.
    assert django_router.db_for_read(Book, instance=other) == "other"
    assert django_router.db_for_write(Book, instance=other) == "other"


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_an_instance_hint_inside_the_cluster_is_routed(router):
    assert router.db_for_write(Book, instance=_on("replica_1", Author())) == "default"
    assert router.db_for_read(Book, instance=_on("default", Author())) in {"replica_1", "replica_2"}
    assert router.db_for_read(Book, instance=Author()) in {"replica_1", "replica_2"}  # unsaved


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_relations_outside_the_cluster_are_left_to_django(router):
    book, author = _on("other", Book()), _on("other", Author())
    assert router.allow_relation(book, author) is None
    assert django_router.allow_relation(book, author) is True  # same database
    assert django_router.allow_relation(book, _on("default", Author())) is False
    assert router.allow_relation(_on("replica_2", Book()), _on("default", Author())) is True


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_migrations_outside_the_cluster_are_left_to_django(router):
    assert router.allow_migrate("default", "testapp") is True
    assert router.allow_migrate("replica_1", "testapp") is False
    assert router.allow_migrate("other", "testapp") is None


@override_settings(REPLICA_ROUTER=WEIGHTED)
def test_an_object_can_be_related_to_one_on_another_database():
    # As Author.objects.using("other").create(first_book=book) does: the new
    # object takes its database from the hint, and the relation is allowed.
    book = Book(title="new")
    book.author = _on("other", Author(name="elsewhere"))
    assert book._state.db == "other"
