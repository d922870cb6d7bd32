from __future__ import annotations

from django.contrib import admin

from bookshop.models import Author, Book, Review


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["name", "born", "country"]
    search_fields = ["name"]


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "published", "price", "version"]
    list_select_related = ["author"]
    search_fields = ["title", "isbn"]
    raw_id_fields = ["author"]


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["book", "reviewer", "rating", "created_at"]
    list_select_related = ["book"]
    raw_id_fields = ["book", "user"]
