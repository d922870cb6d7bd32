"""The router against the real cluster: reads really run on standbys, writes and
transactions really run on the primary.

The failures guarded against are the ones users of other routers meet: a read
inside ``atomic()`` that cannot see the transaction's own row because it went
to a replica, and ``select_for_update()`` or ``get_or_create()`` sent to a
read-only standby.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import DatabaseError, connection, connections, models, router, transaction
from django.db.migrations.operations import CreateModel
from django.db.migrations.state import ProjectState
from django.test.utils import CaptureQueriesContext

from replica_router import transactions, use_primary
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.testapp.models import Author, Book
from tests.support.factories import AuthorFactory, BookFactory

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)


def _server(alias: str) -> tuple[bool, int]:
    """Whether the alias's live connection is to a standby, and its server port."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), inet_server_port()")
        in_recovery, port = cursor.fetchone()
    return in_recovery, port


def _aliases_that_ran(sql_fragment: str, run) -> list[str]:
    """Run ``run()`` and return the aliases whose connections executed matching SQL."""
    contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in ALL}
    for ctx in contexts.values():
        ctx.__enter__()
    try:
        run()
    finally:
        for ctx in contexts.values():
            ctx.__exit__(None, None, None)
    return [
        alias
        for alias, ctx in contexts.items()
        for query in ctx.captured_queries
        if sql_fragment in query["sql"]
    ]


@db
def test_a_row_written_through_the_orm_is_read_back_from_a_standby(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()

    served_by = _aliases_that_ran('FROM "testapp_author"', lambda: Author.objects.get(pk=author.pk))

    assert len(served_by) == 1
    alias = served_by[0]
    assert alias in replica_cluster.replicas
    in_recovery, port = _server(alias)
    assert in_recovery is True
    assert port == replica_cluster.port(alias)
    assert port != replica_cluster.port(PRIMARY)


@db
def test_reads_spread_over_both_standbys_by_weight(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()
    served = Counter(
        _aliases_that_ran(
            'FROM "testapp_author"', lambda: [Author.objects.get(pk=author.pk) for _ in range(40)]
        )
    )
    # testbed.settings weights replica_1:replica_2 as 1:1.
    assert served == {"replica_1": 20, "replica_2": 20}


@db
def test_writes_go_to_the_primary(replica_cluster: Cluster):
    ran = _aliases_that_ran('INSERT INTO "testapp_author"', lambda: AuthorFactory())
    assert ran == ["default"]


@db
def test_a_read_inside_atomic_sees_the_transactions_own_row():
    with transaction.atomic():
        author = Author.objects.create(name="uncommitted")
        # On a replica this row does not exist yet: it is not even committed.
        assert Author.objects.filter(pk=author.pk).exists()
        assert Author.objects.get(pk=author.pk).name == "uncommitted"
        assert list(Book.objects.filter(author=author)) == []


@db
def test_reads_inside_atomic_run_on_the_primary():
    AuthorFactory()
    with transaction.atomic():
        ran = _aliases_that_ran('FROM "testapp_author"', lambda: list(Author.objects.all()))
    assert ran == ["default"]


@db
def test_every_way_out_of_atomic_leaves_no_transaction_counted():
    # The router skips its look at the primary's wrapper while no transaction
    # is counted (replica_router.transactions): a count that stayed up would
    # only cost speed, one that went down early would send reads of an open
    # transaction to a replica.
    before = transactions.open_count
    list(Author.objects.all())
    with transaction.atomic():
        assert transactions.open_count == before + 1
        with transaction.atomic():  # a savepoint: the same transaction
            assert transactions.open_count == before + 1
            ran = _aliases_that_ran('FROM "testapp_author"', lambda: list(Author.objects.all()))
            assert ran == ["default"]
    assert transactions.open_count == before

    with pytest.raises(RuntimeError), transaction.atomic():
        Author.objects.create(name="rolled back")
        raise RuntimeError("rolled back")
    assert transactions.open_count == before

    # A connection closed inside atomic() (Django then reconnects on the next
    # query, with autocommit on again).
    with transaction.atomic():
        connection.close()
    assert transactions.open_count == before + 1  # not yet turned on again
    list(Author.objects.using("default").all())
    assert transactions.open_count == before

    transaction.set_autocommit(False)
    try:
        assert transactions.open_count == before + 1
        ran = _aliases_that_ran('FROM "testapp_author"', lambda: list(Author.objects.all()))
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)
    assert transactions.open_count == before
    assert ran != ["default"]  # not in an atomic block: a manual transaction is the user's


@db
def test_select_for_update_and_get_or_create_use_the_primary(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()

    def lock():
        with transaction.atomic():
            list(Author.objects.select_for_update().filter(pk=author.pk))

    assert set(_aliases_that_ran("FOR UPDATE", lock)) == {"default"}
    ran = _aliases_that_ran(
        'FROM "testapp_author"', lambda: Author.objects.get_or_create(name="new one")
    )
    assert set(ran) == {"default"}


@db
def test_use_primary_sends_reads_to_the_primary(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()

    @use_primary
    def read():
        return Author.objects.get(pk=author.pk)

    assert _aliases_that_ran('FROM "testapp_author"', read) == ["default"]
    with use_primary():
        ran = _aliases_that_ran('FROM "testapp_author"', lambda: Author.objects.get(pk=author.pk))
    assert ran == ["default"]


@db
def test_objects_from_different_aliases_may_be_related(replica_cluster: Cluster):
    author = AuthorFactory()
    replica_cluster.wait_replayed()
    from_replica = Author.objects.using("replica_1").get(pk=author.pk)
    book = BookFactory()  # written on the primary
    book.author = from_replica  # Django asks allow_relation; False would raise ValueError
    book.save()
    replica_cluster.wait_replayed()
    assert Book.objects.get(pk=book.pk).author_id == author.pk


@db
def test_schema_operations_run_on_the_primary_only(replica_cluster: Cluster):
    """migrate asks the router per operation; a standby would reject the DDL."""
    operation = CreateModel("Scratch", [("id", models.AutoField(primary_key=True))])
    before = ProjectState()
    after = before.clone()
    operation.state_forwards("testapp", after)
    try:
        for alias in ALL:
            with connections[alias].schema_editor() as editor:
                operation.database_forwards("testapp", editor, before, after)
        replica_cluster.wait_replayed()
        assert "testapp_scratch" in connection.introspection.table_names()
        scratch = after.apps.get_model("testapp", "Scratch")
        assert router.allow_migrate_model("replica_1", scratch) is False
        assert router.allow_migrate_model("default", scratch) is True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS testapp_scratch")


@db
@pytest.mark.parametrize("alias", ["default", "replica_1"])
def test_copy_is_recorded_in_connection_queries_like_any_statement(alias: str):
    # Django's PostgreSQL debug cursor records cursor.copy(); the engine's
    # cursors once lost it, so DEBUG pages and CaptureQueriesContext missed it.
    statement = "COPY (SELECT 1) TO STDOUT"
    with (
        CaptureQueriesContext(connections[alias]) as captured,
        connections[alias].cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        assert [bytes(row) for row in copy] == [b"1\n"]
    assert [query["sql"] for query in captured.captured_queries] == [statement]


@db
def test_a_raw_locking_read_goes_to_a_replica_unless_sent_to_the_primary():
    # Django cannot tell a raw SELECT ... FOR UPDATE from a read, so neither can
    # a router: the standby refuses it, plainly. docs/routing.md says to use
    # use_primary() or .using() for it, as the primary is where locks are.
    author = AuthorFactory()
    locking = f"SELECT * FROM {Author._meta.db_table} FOR UPDATE"
    with pytest.raises(DatabaseError, match="read-only transaction"):
        list(Author.objects.raw(locking))
    with use_primary(), transaction.atomic():
        assert [row.pk for row in Author.objects.raw(locking)] == [author.pk]
