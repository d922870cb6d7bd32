"""Under pytest-django, mirrored replicas serve reads through the primary.

Every test here is written as a project's test is, with no replica alias in
``databases``. Before, a transactional test's reads went to a replica alias
and failed with ``DatabaseOperationForbidden``, and a ``TestCase`` passed only
because its reads ran inside ``atomic()``.
"""

from __future__ import annotations

import urllib.request

import pytest
from django.db import connections, router

from replica_router.testing import replica_routing
from testbed.testapp.models import Author
from tests.support.factories import AuthorFactory

REPLICAS = {"replica_1", "replica_2"}


def _read_back(name: str) -> None:
    assert router.db_for_read(Author) == "default"
    assert Author.objects.get(name=name).name == name
    assert Author.objects.filter(name=name).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_transactional_test_reads_its_own_committed_rows():
    _read_back(AuthorFactory(name="committed").name)


@pytest.mark.django_db
def test_a_test_in_a_transaction_reads_its_own_rows():
    _read_back(AuthorFactory(name="uncommitted").name)


@pytest.mark.django_db(transaction=True)
def test_the_live_server_reads_what_the_test_wrote(live_server):
    AuthorFactory(name="seen by the server")
    with urllib.request.urlopen(f"{live_server.url}/authors/", timeout=10) as response:
        assert b"seen by the server" in response.read()


@pytest.mark.replica_routing
@pytest.mark.django_db(databases=["default", *REPLICAS], transaction=True)
def test_the_marker_routes_reads_to_the_replicas_for_real():
    reads = {router.db_for_read(Author) for _ in range(10)}
    assert reads == REPLICAS
    with connections["replica_1"].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone() == (True,)


@pytest.mark.django_db(databases=["default", *REPLICAS], transaction=True)
def test_the_decorator_routes_reads_to_the_replicas_within_its_block():
    assert router.db_for_read(Author) == "default"
    with replica_routing():
        assert {router.db_for_read(Author) for _ in range(10)} == REPLICAS
    assert router.db_for_read(Author) == "default"
