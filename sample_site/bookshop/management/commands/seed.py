"""``manage.py seed``: fill the bookshop with realistic data, with a progress bar.

Rows are built with the factory-boy factories and inserted in batches on the
primary (the router sends every write there); the replicas get them through
streaming replication like any other write.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import factory.random
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser, OutputWrapper

from bookshop.demo_account import STAFF_PASSWORD, STAFF_USERNAME
from bookshop.factories import AuthorFactory, BookFactory, ReviewFactory
from bookshop.models import Author, Book, Review
from replica_router import use_primary

BATCH = 500


class Progress:
    """A one-line progress bar; on a terminal it redraws, elsewhere it prints once."""

    def __init__(self, out: OutputWrapper, label: str, total: int, width: int = 30) -> None:
        self.out, self.label, self.total, self.width = out, label, total, width
        self.started = time.monotonic()
        self.live = out.isatty()
        self.update(0)

    def _line(self, done: int) -> str:
        fraction = done / self.total if self.total else 1.0
        filled = round(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        return f"  {self.label:<8} [{bar}] {done:>7,}/{self.total:,} {fraction:>4.0%}"

    def update(self, done: int) -> None:
        if self.live:
            self.out.write("\r" + self._line(done), ending="")
            self.out.flush()

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        self.out.write(("\r" if self.live else "") + self._line(self.total) + f" in {elapsed:.1f}s")


class Command(BaseCommand):
    help = "Create authors, books and reviews (thousands of rows) and a staff account."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--authors", type=int, default=400)
        parser.add_argument("--books", type=int, default=3000)
        parser.add_argument("--reviews", type=int, default=12000)
        parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
        parser.add_argument(
            "--force", action="store_true", help="add the rows even if there are books already"
        )

    # What is there already must be read where it was written: a replica may be
    # behind (and this keeps a one-off command from starting the health monitor).
    @use_primary
    def handle(self, *args: Any, **options: Any) -> None:
        self._staff_account()
        existing = Book.objects.count()
        if existing and not options["force"]:
            self.stdout.write(f"Already seeded ({existing:,} books); --force adds more.")
            return
        factory.random.reseed_random(options["seed"])
        rng = random.Random(options["seed"])
        # ISBNs come from a sequence: continue after the books already there.
        BookFactory.reset_sequence(Book.objects.count() + 1)

        started = time.monotonic()
        authors = self._insert("authors", options["authors"], lambda: AuthorFactory.build(), Author)
        books = self._insert(
            "books", options["books"], lambda: BookFactory.build(author=rng.choice(authors)), Book
        )
        # Popular books get more reviews, as in a real shop.
        popularity = list(itertools.accumulate(rng.paretovariate(1.2) for _ in books))
        self._insert(
            "reviews",
            options["reviews"],
            lambda: ReviewFactory.build(book=rng.choices(books, cum_weights=popularity)[0]),
            Review,
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {len(authors):,} authors, {len(books):,} books and "
                f"{options['reviews']:,} reviews in {time.monotonic() - started:.1f}s."
            )
        )

    def _insert(self, label: str, total: int, build: Any, model: Any) -> list[Any]:
        progress = Progress(self.stdout, label, total)
        created: list[Any] = []
        while len(created) < total:
            batch = [build() for _ in range(min(BATCH, total - len(created)))]
            created.extend(model.objects.bulk_create(batch))
            progress.update(len(created))
        progress.finish()
        return created

    def _staff_account(self) -> None:
        User = get_user_model()  # noqa: N806 - a class
        if User.objects.filter(username=STAFF_USERNAME).exists():
            return
        User.objects.create_user(
            STAFF_USERNAME, password=STAFF_PASSWORD, is_staff=True, is_superuser=True
        )
        self.stdout.write(
            f"Created the staff account {STAFF_USERNAME!r} (password {STAFF_PASSWORD!r})."
        )
