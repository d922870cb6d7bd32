from __future__ import annotations

import factory
from factory.django import DjangoModelFactory

from testbed.testapp.models import Author, Book


class AuthorFactory(DjangoModelFactory):
    class Meta:
        model = Author

    name = factory.Faker("name")


class BookFactory(DjangoModelFactory):
    class Meta:
        model = Book

    title = factory.Faker("sentence", nb_words=4)
    author = factory.SubFactory(AuthorFactory)
