from __future__ import annotations

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")

    def __str__(self) -> str:
        return self.title


class Counter(models.Model):
    """A number that only ever grows on the primary: a replica that returns a
    smaller value than an earlier read did is behind that earlier read."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return str(self.value)
