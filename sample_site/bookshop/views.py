"""The bookshop's pages, and the live /replicas/ page.

Reads go wherever the router sends them: replicas by weight, the primary after
a write (read-your-writes). Some read from the primary on purpose, with
``use_primary``: the edit form, the account page, and the /replicas/ status's
check of who is asking.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Avg, Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from bookshop import readstats
from bookshop.forms import BookForm, ReviewForm
from bookshop.models import Author, Book, Review
from replica_router import use_primary
from replica_router.runtime import get_monitor


def _with_ratings(books: Iterable[Book]) -> list[Book]:
    """Give each book its ``review_count`` and ``rating`` (None without reviews).

    One aggregate over these books' reviews. Annotating the list's queryset
    instead would make the database group every book in the shop, for each
    page shown and again for the paginator's count.
    """
    books = list(books)
    stats = {
        row["book"]: row
        for row in Review.objects.filter(book__in=books)
        .values("book")
        .annotate(count=Count("id"), average=Avg("rating"))
        .order_by()
    }
    for book in books:
        row = stats.get(book.pk)
        book.review_count = row["count"] if row else 0
        book.rating = row["average"] if row else None
    return books


@require_safe
def book_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    books = Book.objects.select_related("author")  # in Meta.ordering, which an index serves
    if query:
        books = books.filter(Q(title__icontains=query) | Q(author__name__icontains=query))
    page = Paginator(books, 25).get_page(request.GET.get("page"))
    page.object_list = _with_ratings(page.object_list)
    return render(request, "bookshop/book_list.html", {"page": page, "query": query})


def _book_page(request: HttpRequest, book: Book, form: ReviewForm) -> HttpResponse:
    stats = book.reviews.aggregate(count=Count("id"), average=Avg("rating"))
    reviews = book.reviews.all()[:20]
    context = {"book": book, "reviews": reviews, "stats": stats, "form": form}
    return render(request, "bookshop/book_detail.html", context)


@require_safe
def book_detail(request: HttpRequest, pk: int) -> HttpResponse:
    book = get_object_or_404(Book.objects.select_related("author"), pk=pk)
    initial = {"reviewer": request.user.get_username()} if request.user.is_authenticated else {}
    return _book_page(request, book, ReviewForm(initial=initial))


@require_POST
def review_create(request: HttpRequest, pk: int) -> HttpResponse:
    """Post a review (anyone may), then redirect to the book's page.

    The redirected GET is a new request: the pinning middleware's cookie makes
    it read from a replica that has replayed this write, or from the primary,
    so the new review is always on the page.
    """
    book = get_object_or_404(Book.objects.select_related("author"), pk=pk)
    form = ReviewForm(request.POST)
    if not form.is_valid():
        return _book_page(request, book, form)
    review = form.save(commit=False)
    review.book = book
    review.user = request.user if request.user.is_authenticated else None
    review.save()
    messages.success(request, "Thank you, your review is up.")
    return redirect(f"{book.get_absolute_url()}#review-{review.pk}")


@login_required
@use_primary
def book_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    """Create a book (no ``pk``) or edit one, refusing to overwrite a newer edit.

    Every read here goes to the primary. The form must start from the latest
    saved version: filled in from a replica that has not replayed someone's
    last edit, it would offer stale values and carry a stale version number,
    and a conflict reported against stale data could not be resolved either.
    """
    book = get_object_or_404(Book.objects.select_related("author"), pk=pk) if pk else Book()
    title = book.title  # validating a form writes the input onto its instance
    theirs: Book | None = None
    changed: list[tuple[str, Any, Any]] = []
    if request.method == "POST":
        form = BookForm(request.POST, instance=book)
        if form.is_valid():
            saved = _save_unless_changed(form, pk)
            if saved is not None:
                messages.success(request, f"Saved “{saved.title}”.")
                return redirect(saved)
            # Someone saved this book since the form was filled in. Show their
            # version beside the user's input; saving again overwrites it knowingly.
            theirs = Book.objects.select_related("author").get(pk=pk)
            title = theirs.title
            changed = _differences(form.cleaned_data, theirs)
            data = request.POST.copy()
            data["version"] = str(theirs.version)
            form = BookForm(data, instance=copy.copy(theirs))
    else:
        form = BookForm(instance=book)
    context = {"form": form, "pk": pk, "title": title, "theirs": theirs, "changed": changed}
    return render(request, "bookshop/book_form.html", context, status=409 if theirs else 200)


def _save_unless_changed(form: BookForm, pk: int | None) -> Book | None:
    """Save the form; None if the book's version moved since the form was filled in."""
    with transaction.atomic():
        if pk is None:
            book: Book = form.save()
            return book
        current = Book.objects.select_for_update().values_list("version", flat=True).get(pk=pk)
        if form.cleaned_data.get("version") != current:
            return None
        book = form.save(commit=False)
        book.version = current + 1
        book.save()
        return book


def _differences(mine: dict[str, Any], theirs: Book) -> list[tuple[str, Any, Any]]:
    """(label, their value, the user's value) for each field where they differ."""
    rows = []
    for name in BookForm.Meta.fields:
        current = getattr(theirs, name)
        if str(mine.get(name)) != str(current):
            rows.append((Book._meta.get_field(name).verbose_name.capitalize(), current, mine[name]))
    return rows


@require_safe
def author_list(request: HttpRequest) -> HttpResponse:
    authors = Author.objects.annotate(book_count=Count("books")).order_by("name", "pk")
    page = Paginator(authors, 30).get_page(request.GET.get("page"))
    return render(request, "bookshop/author_list.html", {"page": page})


@require_safe
def author_detail(request: HttpRequest, pk: int) -> HttpResponse:
    author = get_object_or_404(Author, pk=pk)
    books = _with_ratings(author.books.select_related("author"))
    return render(request, "bookshop/author_detail.html", {"author": author, "books": books})


@login_required
@use_primary
def account(request: HttpRequest) -> HttpResponse:
    """The user's own reviews, read from the primary.

    Read-your-writes covers the few seconds after a write in this browser; a
    user's own page must be right from any device and at any time, and it is
    small enough for the primary to serve.
    """
    reviews = Review.objects.filter(user=request.user).select_related("book")[:50]
    return render(request, "bookshop/account.html", {"reviews": reviews})


# -- the replicas ----------------------------------------------------------------


def replica_status(request: HttpRequest) -> dict[str, Any]:
    """Each node's health (from the router's monitor) and the reads it served.

    Everyone sees states, lags, weights and read counts; staff also see hosts,
    ports, reasons and errors, as with the library's health view.
    """
    # Loading request.user reads the session and the user. From the primary: this
    # page is watched during incidents, and must not wait on a dying replica.
    with readstats.not_counted(), use_primary():
        staff = bool(request.user.is_staff)
    reads = readstats.counter.counts()
    monitor = get_monitor()
    document: dict[str, Any] = {"status": "unmonitored", "taken_at": None, "nodes": []}
    if monitor is not None:
        if not monitor.running:
            # The router starts it on the first routed read; this page may come first.
            monitor.start(wait=True)
        snapshot = monitor.snapshot
        document = snapshot.as_dict(topology=staff)
        for node, row in zip(snapshot.nodes, document["nodes"], strict=True):
            row["weight"] = node.weight  # configuration, not topology
    recent_total = sum(r["recent"] for r in reads.values())
    for row in document["nodes"]:
        counts = reads.get(row["alias"], {"recent": 0, "total": 0})
        row["reads_recent"] = counts["recent"]
        row["reads_total"] = counts["total"]
        row["reads_share"] = round(100 * counts["recent"] / recent_total) if recent_total else 0
    document["window_seconds"] = readstats.counter.window
    document["staff"] = staff
    return document


@require_safe
def replicas(request: HttpRequest) -> HttpResponse:
    return render(request, "bookshop/replicas.html", {"initial": replica_status(request)})


@require_safe
def replicas_json(request: HttpRequest) -> JsonResponse:
    response = JsonResponse(replica_status(request))
    response["Cache-Control"] = "no-store"
    return response
