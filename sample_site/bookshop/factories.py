"""factory-boy factories for the bookshop: realistic authors, books and reviews.

The seed command builds instances with them and inserts them in batches; tests
create them one by one. The factories leave the database to the router, so
their writes go to the primary as a user's would.
"""

from __future__ import annotations

import datetime
import decimal

import factory
from factory.django import DjangoModelFactory

from bookshop.models import Author, Book, Review

_REVIEW_RATINGS = [5, 5, 5, 4, 4, 4, 4, 3, 3, 2, 1]


def isbn13(number: int) -> str:
    """A valid ISBN-13 in the 978 range, unique per ``number``."""
    digits = f"978{number % 10**9:09d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return digits + str((10 - total % 10) % 10)


class AuthorFactory(DjangoModelFactory):
    class Meta:
        model = Author

    name = factory.Faker("name")
    born = factory.Faker("random_int", min=1890, max=1995)
    country = factory.Faker("country")
    bio = factory.Faker("paragraph", nb_sentences=4)


class BookFactory(DjangoModelFactory):
    class Meta:
        model = Book

    class Params:
        phrase = factory.Faker("catch_phrase")

    title = factory.LazyAttribute(lambda book: book.phrase.title())
    author = factory.SubFactory(AuthorFactory)
    isbn = factory.Sequence(isbn13)
    published = factory.Faker(
        "date_between", start_date=datetime.date(1950, 1, 1), end_date=datetime.date(2024, 12, 31)
    )
    pages = factory.Faker("random_int", min=96, max=880)
    price = factory.Faker(
        "pydecimal",
        left_digits=2,
        right_digits=2,
        min_value=decimal.Decimal("6.99"),
        max_value=decimal.Decimal("49.99"),
    )
    summary = factory.Faker("paragraph", nb_sentences=5)


class ReviewFactory(DjangoModelFactory):
    class Meta:
        model = Review

    book = factory.SubFactory(BookFactory)
    reviewer = factory.Faker("first_name")
    rating = factory.Faker("random_element", elements=_REVIEW_RATINGS)
    text = factory.Faker("paragraph", nb_sentences=3)
