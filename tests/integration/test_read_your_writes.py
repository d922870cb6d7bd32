"""Read-your-writes against replicas that really lag (apply delay or paused replay).

The failure guarded against is the one users of every other Django router
report: a user saves a form, is redirected, and sees the old data; or logs in
and is logged out again on the next page, because that read hit a replica that
had not replayed the write yet.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.db import connections, router
from django.test import AsyncClient, Client, override_settings
from psycopg import sql

from replica_router import causal, current_token
from replica_router.middleware import sign_pin
from replica_router.testing.cluster import Cluster
from testbed.testapp.models import Author
from tests.support.factories import AuthorFactory

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

PINNING = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
WITHOUT_PINNING = PINNING[1:]
# The health monitor would take a lagging replica out of rotation and so hide
# staleness; these tests are about pinning alone, so it tolerates any lag.
TOLERANT = {"MAX_LAG_SECONDS": 3600.0, "MAX_LAG_BYTES": 2**40, "CHECK_INTERVAL": 0.2}


def configured(mode: str = "lsn", middleware: list[str] = PINNING, **extra):
    return override_settings(
        ROOT_URLCONF="testbed.ryw_urls",
        MIDDLEWARE=middleware,
        REPLICA_ROUTER={
            **settings.REPLICA_ROUTER,
            **TOLERANT,
            "READ_YOUR_WRITES": mode,
            **extra,
        },
    )


def post_then_get(client: Client, iterations: int) -> tuple[int, list[str]]:
    stale, served = 0, []
    for i in range(iterations):
        created = client.post("/authors/", {"name": f"author {i}"})
        assert created.status_code == 200
        pk = created.json()["id"]
        shown = client.get(f"/authors/{pk}/")
        if shown.status_code == 404:
            stale += 1
        else:
            served.append(shown.json()["db"])
    return stale, served


@db
def test_post_then_get_never_reads_stale_with_the_middleware(delay_replica):
    delay_replica("replica_1", 2)
    with configured("lsn"):
        stale, served = post_then_get(Client(), 200)
    assert stale == 0
    # replica_1 is 2 s behind: it must never serve a read that follows a write.
    assert "replica_1" not in served


@db
def test_post_then_get_reads_stale_without_the_middleware(delay_replica):
    """The same scenario without pinning: proves the test above can fail."""
    delay_replica("replica_1", 2)
    with configured("lsn", middleware=WITHOUT_PINNING):
        stale, _ = post_then_get(Client(), 200)
    assert stale > 0


@db
def test_time_mode_also_avoids_stale_reads(delay_replica):
    delay_replica("replica_1", 2)
    with configured("time"):
        stale, served = post_then_get(Client(), 50)
    assert stale == 0
    assert set(served) == {"default"}


@db
def test_a_write_pins_the_rest_of_the_request():
    with configured("lsn"):
        assert Client().get("/write-then-read/").json()["db"] == "default"


@db
def test_assigning_a_related_object_is_not_a_write(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()
    with configured("lsn"):
        response = Client().get(f"/authors/{author.pk}/assign/")
    assert response.json()["db"] in {"replica_1", "replica_2"}
    assert settings.REPLICA_ROUTER.get("COOKIE_NAME", "replica_router") not in response.cookies


@db
def test_login_survives_the_next_request_while_replicas_are_paused(
    pause_replica, replica_cluster: Cluster
):
    User.objects.create_user("alice", password="pw")
    replica_cluster.wait_replayed()
    pause_replica("replica_1")
    pause_replica("replica_2")
    with configured("lsn"):
        client = Client()
        assert client.post("/login/", {"username": "alice"}).status_code == 200
        # The session row exists only on the primary; the pin sends the read there.
        assert client.get("/whoami/").content == b"alice"


@db
def test_login_is_lost_without_the_middleware_while_replicas_are_paused(
    pause_replica, replica_cluster: Cluster
):
    """The failure the middleware prevents, shown for real."""
    User.objects.create_user("bob", password="pw")
    replica_cluster.wait_replayed()
    pause_replica("replica_1")
    pause_replica("replica_2")
    with configured("lsn", middleware=WITHOUT_PINNING):
        client = Client()
        assert client.post("/login/", {"username": "bob"}).status_code == 200
        assert client.get("/whoami/").content == b"anonymous"


@db
def test_lsn_mode_returns_to_replicas_once_they_caught_up(replica_cluster: Cluster):
    # Without monotonic reads the cookie has no use once every replica has the
    # write (with them, it names the replica to read on from; see below).
    with configured("lsn", PIN_SECONDS=60.0, MONOTONIC_READS=False):
        client = Client()
        pk = client.post("/authors/", {"name": "x"}).json()["id"]
        cookie = client.cookies["replica_router"]
        assert cookie.value and cookie["httponly"] and cookie["samesite"] == "Lax"
        replica_cluster.wait_replayed()
        shown = client.get(f"/authors/{pk}/")
        # Well before PIN_SECONDS (60 s), the read is back on a replica...
        assert shown.json()["db"] in {"replica_1", "replica_2"}
        # ...and the cookie is dropped, every replica having passed the token.
        assert shown.cookies["replica_router"].value == ""


@db
def test_the_cookie_names_the_replica_read_from_without_outliving_the_write(
    replica_cluster: Cluster,
):
    with configured("lsn", PIN_SECONDS=60.0):
        client = Client()
        pk = client.post("/authors/", {"name": "x"}).json()["id"]
        written = client.cookies["replica_router"].value
        replica_cluster.wait_replayed()
        first = client.get(f"/authors/{pk}/")
        node = first.json()["db"]
        assert node in {"replica_1", "replica_2"}
        carried = first.cookies["replica_router"].value
        assert carried.rsplit(":", 2)[0] == written.rsplit(":", 2)[0] + f"@{node}"
        # Signed at the time of the write: the pin does not last longer.
        assert carried.rsplit(":", 2)[1] == written.rsplit(":", 2)[1]
        # The next requests read there again and need not set the cookie again.
        for _ in range(4):
            again = client.get(f"/authors/{pk}/")
            assert again.json()["db"] == node
            assert "replica_router" not in again.cookies


@db
def test_time_mode_keeps_reads_on_the_primary_for_pin_seconds(replica_cluster: Cluster):
    with configured("time", PIN_SECONDS=60.0):
        client = Client()
        pk = client.post("/authors/", {"name": "x"}).json()["id"]
        replica_cluster.wait_replayed()
        assert client.get(f"/authors/{pk}/").json()["db"] == "default"


@db
def test_the_cookie_is_secure_on_https():
    with configured("lsn"):
        response = Client().post("/authors/", {"name": "x"}, secure=True)
    assert response.cookies["replica_router"]["secure"]


def _lagging_read_with_cookie(raw_cookie: str, replica_cluster: Cluster, pause_replica) -> str:
    """Write while replicas are paused, then read with the given cookie."""
    pause_replica("replica_1")
    pause_replica("replica_2")
    author = AuthorFactory()
    client = Client()
    client.cookies["replica_router"] = raw_cookie
    response = client.get(f"/authors/{author.pk}/")
    return "stale" if response.status_code == 404 else response.json()["db"]


@db
def test_a_valid_cookie_pins_while_replicas_lag(replica_cluster: Cluster, pause_replica):
    with configured("lsn"):
        token = sign_pin("lsn:FF/FFFFFFFF")  # far ahead of any replica
        assert _lagging_read_with_cookie(token, replica_cluster, pause_replica) == "default"


@pytest.mark.parametrize(
    "make_cookie",
    [
        pytest.param(lambda: sign_pin("lsn:FF/FFFFFFFF")[:-1] + "x", id="tampered"),
        pytest.param(lambda: "lsn:FF/FFFFFFFF", id="unsigned"),
        pytest.param(lambda: sign_pin("lsn:not-an-lsn"), id="malformed"),
        pytest.param(lambda: "\x00garbage;;", id="garbage"),
    ],
)
@db
def test_bad_cookies_are_ignored(make_cookie, replica_cluster: Cluster, pause_replica):
    with configured("lsn"):
        served = _lagging_read_with_cookie(make_cookie(), replica_cluster, pause_replica)
    assert served == "stale"  # read from a (paused) replica: the cookie was ignored


@db
def test_a_cookie_signed_with_another_secret_key_is_ignored(
    replica_cluster: Cluster, pause_replica
):
    with override_settings(SECRET_KEY="someone-else's-key"):
        foreign = sign_pin("lsn:FF/FFFFFFFF")
    with configured("lsn"):
        served = _lagging_read_with_cookie(foreign, replica_cluster, pause_replica)
    assert served == "stale"


@db
def test_an_expired_cookie_is_ignored(replica_cluster: Cluster, pause_replica):
    class OneHourAgo(signing.TimestampSigner):
        def timestamp(self) -> str:
            return signing.b62_encode(int(time.time()) - 3600)

    old = OneHourAgo(salt="replica_router.middleware.PrimaryPinningMiddleware").sign(
        "lsn:FF/FFFFFFFF"
    )
    with configured("lsn", PIN_SECONDS=5.0):
        served = _lagging_read_with_cookie(old, replica_cluster, pause_replica)
    assert served == "stale"


@db
def test_concurrent_async_and_sync_requests_never_share_a_pin(replica_cluster: Cluster):
    AuthorFactory()
    replica_cluster.wait_replayed()

    async def writer(path: str) -> str:
        response = await AsyncClient().get(path)
        return json.loads(response.content)["db"]

    async def reader(path: str) -> str:
        response = await AsyncClient().get(path)
        return json.loads(response.content)["db"]

    async def main() -> tuple[list[str], list[str]]:
        writes = [writer("/async/write-then-read/") for _ in range(20)]
        writes += [writer("/write-then-read/") for _ in range(20)]
        reads = [reader("/async/any/") for _ in range(20)]
        reads += [reader("/any/") for _ in range(20)]
        results = await asyncio.gather(*writes, *reads)
        # Sync views ran in asgiref's executor thread: close what they opened.
        await sync_to_async(connections.close_all)()
        return list(results[:40]), list(results[40:])

    with configured("lsn"):
        after_writes, plain_reads = asyncio.run(main())
    assert set(after_writes) == {"default"}
    assert set(plain_reads) <= {"replica_1", "replica_2"}


# -- outside HTTP: the job helpers ------------------------------------------------


def _in_thread(func):
    result: list[object] = []

    def run():
        try:
            result.append(func())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


@db
def test_a_token_from_a_write_sends_a_later_read_in_another_thread_to_the_primary(
    replica_cluster: Cluster, pause_replica
):
    with configured("lsn"):
        replica_cluster.wait_replayed()
        pause_replica("replica_1")
        pause_replica("replica_2")

        def write():
            assert current_token() is None  # nothing written in this thread yet
            author = AuthorFactory()
            return author.pk, current_token()

        pk, token = _in_thread(write)
        assert token is not None

        def read_with(token):
            with causal(token):
                return router.db_for_read(Author), Author.objects.get(pk=pk).name

        alias, _ = _in_thread(lambda: read_with(token))
        assert alias == "default"

        replica_cluster.resume("replica_1")
        replica_cluster.resume("replica_2")
        replica_cluster.wait_replayed()
        alias, _ = _in_thread(lambda: read_with(token))
        assert alias in {"replica_1", "replica_2"}


@db
def test_the_documented_task_queue_pattern(replica_cluster: Cluster, pause_replica):
    """The current_token()/causal() pattern docs/routing.md shows, with a plain queue."""
    jobs: queue.Queue = queue.Queue()

    def enqueue(task, *args, headers):  # stands in for task.apply_async(headers=...)
        jobs.put((task, args, headers))

    def send_welcome(author_pk):
        return Author.objects.get(pk=author_pk).name

    def worker():  # stands in for the Celery worker and its task_prerun hook
        task, args, headers = jobs.get()
        with causal(headers.get("replica_router_token")):
            return task(*args)

    with configured("lsn"):
        pause_replica("replica_1")
        pause_replica("replica_2")

        def view():
            author = Author.objects.create(name="new user")
            enqueue(send_welcome, author.pk, headers={"replica_router_token": current_token()})

        _in_thread(view)
        # Without the token the worker would read from a paused replica and fail.
        assert _in_thread(worker) == "new user"


def _hook_connected() -> bool:
    from django.db.backends.signals import connection_created

    return any(
        key[0] == "replica_router.install_write_detector"
        for key, *_ in connection_created.receivers
    )


@db
def test_a_primary_on_our_engine_notes_writes_without_a_connection_hook():
    """No ``connection_created`` receiver: it would cost every pool checkout a dispatch."""
    assert not _hook_connected()
    with causal() as state:
        list(Author.objects.using("default").all())
        assert not state.wrote
        AuthorFactory()
        assert state.wrote


@db
def test_a_write_composed_with_psycopg_sql_pins_the_request():
    """Raw SQL built with ``psycopg.sql`` is a write too: its later reads must
    not go to a replica that may not have it yet."""
    insert = sql.SQL("INSERT INTO {} (name) VALUES ({})").format(
        sql.Identifier("testapp_author"), sql.Literal("composed")
    )
    with causal() as state, connections["default"].cursor() as cursor:
        cursor.execute(insert)
        assert state.wrote
        assert router.db_for_read(Author) == "default"


@db
def test_a_primary_on_djangos_engine_gets_the_write_detector(monkeypatch):
    from django.db.utils import load_backend

    from replica_router.writes import detect_writes, hook_write_detector

    stock = "django.db.backends.postgresql"
    monkeypatch.setitem(settings.DATABASES["default"], "ENGINE", stock)
    assert hook_write_detector()
    try:
        assert _hook_connected()
        primary = load_backend(stock).DatabaseWrapper(
            {**connections["default"].settings_dict, "ENGINE": stock}, "default"
        )
        primary.connect()  # sends connection_created
        try:
            assert detect_writes in primary.execute_wrappers
            with causal() as state, primary.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM testapp_author")
                assert not state.wrote
                cursor.execute("INSERT INTO testapp_author (name) VALUES ('stock')")
                assert state.wrote
        finally:
            primary.close()
    finally:
        monkeypatch.undo()
        assert not hook_write_detector()
    assert not _hook_connected()
