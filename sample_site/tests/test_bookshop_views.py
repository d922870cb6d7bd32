"""The bookshop's pages through the router, against the real cluster.

What they guard against: pages that read from the wrong node (a list that
loads the primary, an edit form filled in from a stale replica), a review that
vanishes on the page right after it was posted, an edit that silently
overwrites a newer one, and a /replicas/ endpoint that leaks hosts to anyone.
"""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from bookshop.factories import AuthorFactory, BookFactory, ReviewFactory
from bookshop.models import Book, Review
from helpers import counted, db, recorded, router_settings, table_reads
from replica_router.testing.cluster import Cluster

# The bookshop's reads go to its replicas in these tests, as on the site.
pytestmark = pytest.mark.replica_routing

REPLICAS = ["replica_1", "replica_2"]
# Replicas that lag must stay in rotation for these tests: what keeps a read
# off them is the pin, not the health monitor.
TOLERANT = {"MAX_LAG_SECONDS": 3600.0, "MAX_LAG_BYTES": 2**40}


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("staffer", password="pw", is_staff=True)


def logged_in(user: User, cluster: Cluster) -> Client:
    """A client logged in, with replicas caught up and the login's pin cookie gone."""
    client = Client()
    client.force_login(user)
    cluster.wait_replayed()
    return client


@db
def test_the_book_list_reads_from_the_replicas_by_weight(replica_cluster: Cluster):
    BookFactory.create_batch(30)
    replica_cluster.wait_replayed()
    weights = settings.REPLICA_ROUTER["REPLICAS"]
    visitor = Client()
    with counted() as reads:
        for _ in range(30):
            response = visitor.get("/")
            assert response.status_code == 200
    assert reads["default"] == 0
    # Three reads per page (count, rows, their ratings); the balancer's order is exact.
    assert reads["replica_1"] + reads["replica_2"] == 90
    assert reads["replica_1"] * weights["replica_2"] == reads["replica_2"] * weights["replica_1"]


@db
def test_book_pages_show_their_data(replica_cluster: Cluster):
    book = BookFactory(title="The Quiet Replica")
    ReviewFactory(book=book, reviewer="Ada", rating=5, text="Never stale.")
    replica_cluster.wait_replayed()
    client = Client()
    listing = client.get("/", {"q": "quiet replica"})
    assert "The Quiet Replica" in listing.content.decode()
    detail = client.get(f"/books/{book.pk}/").content.decode()
    assert "Never stale." in detail and "Ada" in detail and book.author.name in detail
    author = client.get(f"/authors/{book.author.pk}/").content.decode()
    assert "The Quiet Replica" in author
    assert client.get("/authors/").status_code == 200
    assert client.get("/books/999999/").status_code == 404


@db
def test_the_lists_show_each_books_review_count_and_rating(replica_cluster: Cluster):
    author = AuthorFactory(name="Ann Author")
    rated = BookFactory(title="Rated Book", author=author)
    BookFactory(title="Unrated Book", author=author)
    for rating in (4, 5):
        ReviewFactory(book=rated, rating=rating)
    replica_cluster.wait_replayed()

    def rows(html: str) -> dict[str, list[str]]:
        found = {}
        for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
            cells = [
                re.sub(r"<[^>]+>", "", c).strip()
                for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            ]
            if cells:
                found[cells[0]] = cells
        return found

    client = Client()
    for path in ("/?q=Ann+Author", f"/authors/{author.pk}/"):
        shown = rows(client.get(path).content.decode())
        assert shown["Rated Book"][-2:] == ["2", "4.5"], (path, shown)
        assert shown["Unrated Book"][-2:] == ["0", "–"], (path, shown)


@db
def test_a_posted_review_is_on_the_page_after_the_redirect(replica_cluster: Cluster, delay_replica):
    book = BookFactory()
    replica_cluster.wait_replayed()
    for name in REPLICAS:
        delay_replica(name, 2)
    with override_settings(REPLICA_ROUTER=router_settings(**TOLERANT)):
        client = Client()
        posted = client.post(
            f"/books/{book.pk}/reviews/",
            {"reviewer": "Grace", "rating": "4", "text": "Posted just now."},
        )
        assert posted.status_code == 302
        assert settings.REPLICA_ROUTER.get("COOKIE_NAME", "replica_router") in posted.cookies
        with counted() as reads, recorded() as log:
            page = client.get(posted["Location"])
        assert "Posted just now." in page.content.decode()
        # The replicas apply WAL 2 s late: only the primary has the review yet.
        assert table_reads(log) == {"default"}
        assert reads["replica_1"] == reads["replica_2"] == 0

        # The same page for a visitor without the pin: stale, which is what the
        # pin protects against (and proves this test can fail).
        stranger = Client().get(posted["Location"])
        assert "Posted just now." not in stranger.content.decode()
    assert Review.objects.using("default").get().user is None


@db
def test_an_invalid_review_shows_the_errors(replica_cluster: Cluster):
    book = BookFactory()
    replica_cluster.wait_replayed()
    response = Client().post(f"/books/{book.pk}/reviews/", {"reviewer": "", "rating": "9"})
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not Review.objects.exists()


@db
def test_a_logged_in_reviewer_is_recorded(replica_cluster: Cluster, staff: User):
    book = BookFactory()
    client = logged_in(staff, replica_cluster)
    form = client.get(f"/books/{book.pk}/").content.decode()
    assert 'value="staffer"' in form  # the name is filled in
    client.post(f"/books/{book.pk}/reviews/", {"reviewer": "S", "rating": "3", "text": "Mine."})
    assert Review.objects.using("default").get().user == staff
    account = client.get("/account/").content.decode()
    assert book.title in account


@db
def test_editing_needs_a_login(replica_cluster: Cluster):
    book = BookFactory()
    response = Client().get(f"/books/{book.pk}/edit/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def _form_data(book: Book, **changes: object) -> dict[str, object]:
    data = {
        "title": book.title,
        "author": book.author_id,
        "isbn": book.isbn,
        "published": book.published.isoformat(),
        "pages": book.pages,
        "price": str(book.price),
        "summary": book.summary,
        "version": book.version,
    }
    data.update(changes)
    return data


@db
def test_the_edit_form_reads_from_the_primary(replica_cluster: Cluster, staff: User):
    book = BookFactory()
    client = logged_in(staff, replica_cluster)
    # Without use_primary these reads would go to the replicas (a visitor's do).
    with recorded() as log:
        Client().get(f"/books/{book.pk}/")
    assert table_reads(log) <= set(REPLICAS) and table_reads(log)
    with recorded() as log:
        response = client.get(f"/books/{book.pk}/edit/")
    assert response.status_code == 200
    assert f"Edit “{book.title}”" in response.content.decode()
    assert table_reads(log) == {"default"}


@db
def test_the_edit_form_sees_an_edit_the_replicas_have_not_replayed(
    replica_cluster: Cluster, staff: User, delay_replica
):
    book = BookFactory(title="Before")
    client = logged_in(staff, replica_cluster)
    for name in REPLICAS:
        delay_replica(name, 3)
    Book.objects.filter(pk=book.pk).update(title="After", version=2)
    with override_settings(REPLICA_ROUTER=router_settings(**TOLERANT)):
        page = client.get(f"/books/{book.pk}/edit/").content.decode()
        assert 'value="After"' in page
        assert re.search(r'name="version" value="2"', page)
        # A visitor's page is still served by the replicas, 3 s behind.
        assert "Before" in Client().get(f"/books/{book.pk}/").content.decode()


@db
def test_saving_over_a_newer_edit_is_refused_then_allowed_knowingly(
    replica_cluster: Cluster, staff: User
):
    book = BookFactory(title="Original")
    client = logged_in(staff, replica_cluster)
    stale = _form_data(book, title="Mine")  # filled in at version 1
    Book.objects.filter(pk=book.pk).update(title="Theirs", version=2)

    conflict = client.post(f"/books/{book.pk}/edit/", stale)
    assert conflict.status_code == 409
    body = conflict.content.decode()
    assert "Someone saved this book" in body and "Theirs" in body and "Mine" in body
    assert Book.objects.using("default").get(pk=book.pk).title == "Theirs"

    # The re-rendered form carries their version: saving again is deliberate.
    version = re.search(r'name="version" value="(\d+)"', body).group(1)
    saved = client.post(f"/books/{book.pk}/edit/", {**stale, "version": version})
    assert saved.status_code == 302
    book.refresh_from_db()
    assert (book.title, book.version) == ("Mine", 3)


@db
def test_adding_a_book(replica_cluster: Cluster, staff: User):
    author = AuthorFactory()
    client = logged_in(staff, replica_cluster)
    assert client.get("/books/new/").status_code == 200
    data = _form_data(BookFactory.build(author=author), title="Brand New")
    response = client.post("/books/new/", data)
    assert response.status_code == 302
    book = Book.objects.using("default").get(title="Brand New")
    assert response["Location"] == f"/books/{book.pk}/"
    assert book.version == 1
    assert "Brand New" in client.get(response["Location"]).content.decode()


@db
def test_login_and_logout_with_the_auth_views(replica_cluster: Cluster, staff: User):
    client = Client()
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "staffer", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/account/"
    # The session was just written on the primary; the next page must see it.
    assert "staffer" in client.get("/account/").content.decode()
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/account/").status_code == 302


@db
def test_the_status_json_counts_reads_and_hides_topology_from_visitors(
    replica_cluster: Cluster, staff: User
):
    BookFactory.create_batch(3)
    replica_cluster.wait_replayed()
    visitor = Client()
    for _ in range(6):
        visitor.get("/")
    public = visitor.get("/replicas/status.json")
    assert public.status_code == 200
    assert public["Cache-Control"] == "no-store"
    document = public.json()
    assert [n["alias"] for n in document["nodes"]] == ["default", *REPLICAS]
    nodes = {n["alias"]: n for n in document["nodes"]}
    assert sum(nodes[r]["reads_recent"] for r in REPLICAS) >= 12
    assert nodes["replica_1"]["weight"] == settings.REPLICA_ROUTER["REPLICAS"]["replica_1"]
    body = public.content.decode()
    # No topology keys ("host" is also a HEALTH_SHARING mode, so keys are looked for).
    assert "127.0.0.1" not in body and '"reason":' not in body and '"host":' not in body
    for port in replica_cluster.ports.values():
        assert not re.search(rf"(?<!\d){port}(?!\d)", body), port

    client = logged_in(staff, replica_cluster)
    with counted() as reads:
        own = client.get("/replicas/status.json").json()
    assert sum(reads.values()) == 0  # the endpoint's own reads are not counted
    assert own["staff"] is True
    replica = {n["alias"]: n for n in own["nodes"]}["replica_1"]
    assert replica["host"] == "127.0.0.1"
    assert replica["port"] == str(replica_cluster.port("replica_1"))
    assert "reason" in replica and "last_error" in replica


@db
def test_the_replicas_page_and_the_health_view(replica_cluster: Cluster, staff: User):
    page = Client().get("/replicas/").content.decode()
    assert 'data-alias="replica_1"' in page and "/replicas/status.json" in page
    assert "Address" not in page
    staff_page = logged_in(staff, replica_cluster).get("/replicas/").content.decode()
    assert "Address" in staff_page and "127.0.0.1" in staff_page
    health = Client().get("/health/replicas/")
    assert health.status_code == 200
    assert {n["alias"] for n in health.json()["nodes"]} == {"default", *REPLICAS}
