"""The same, with pytest-django's markers and fixtures."""

import pytest

from notes.models import Note
from notes.tests import _fetch


@pytest.mark.django_db
def test_django_db(client):
    Note.objects.create(text="one")
    assert Note.objects.count() == 1
    assert client.get("/notes/").content == b"one"


@pytest.mark.django_db(transaction=True)
def test_django_db_transaction(client):
    Note.objects.create(text="two")
    assert Note.objects.get().text == "two"
    assert client.post("/notes/", {"text": "three"}).content == b"two\nthree"


@pytest.mark.django_db(transaction=True)
def test_live_server(live_server):
    Note.objects.create(text="four")
    assert _fetch(live_server.url) == b"four"
    assert _fetch(live_server.url, "five") == b"four\nfive"
    assert Note.objects.count() == 2
