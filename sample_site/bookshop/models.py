from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse


class Author(models.Model):
    name = models.CharField(max_length=120)
    born = models.PositiveSmallIntegerField(null=True, blank=True)
    country = models.CharField(max_length=60, blank=True)
    bio = models.TextField(blank=True)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("author-detail", args=[self.pk])


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.PROTECT, related_name="books")
    isbn = models.CharField("ISBN", max_length=13, unique=True)
    published = models.DateField()
    pages = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=7, decimal_places=2)
    summary = models.TextField(blank=True)
    #: Bumped by every save through the edit form: a form filled in from an
    #: older version cannot silently overwrite a newer one.
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title", "pk"]
        # The book list pages through books in this order.
        indexes = [models.Index(fields=["title", "id"], name="bookshop_book_title_id")]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("book-detail", args=[self.pk])


class Review(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reviews")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reviewer = models.CharField("your name", max_length=80)
    rating = models.PositiveSmallIntegerField(
        choices=[(n, "★" * n) for n in range(5, 0, -1)],
        validators=[MinValueValidator(1), MaxValueValidator(5)],
    )
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["book", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.reviewer} on {self.book}"
