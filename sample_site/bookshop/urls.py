from __future__ import annotations

from django.urls import path

from bookshop import views

urlpatterns = [
    path("", views.book_list, name="book-list"),
    path("books/new/", views.book_edit, name="book-create"),
    path("books/<int:pk>/", views.book_detail, name="book-detail"),
    path("books/<int:pk>/edit/", views.book_edit, name="book-edit"),
    path("books/<int:pk>/reviews/", views.review_create, name="review-create"),
    path("authors/", views.author_list, name="author-list"),
    path("authors/<int:pk>/", views.author_detail, name="author-detail"),
    path("account/", views.account, name="account"),
    path("replicas/", views.replicas, name="replicas"),
    path("replicas/status.json", views.replicas_json, name="replicas-json"),
]
