"""Views for the read-your-writes tests: each response says which alias served it."""

from __future__ import annotations

from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from testbed.testapp.models import Author, Book


def create_author(request: HttpRequest) -> JsonResponse:
    author = Author.objects.create(name=request.POST.get("name", "someone"))
    return JsonResponse({"id": author.pk})


def show_author(request: HttpRequest, pk: int) -> JsonResponse:
    author = Author.objects.filter(pk=pk).first()
    if author is None:  # a stale read: the replica has not replayed the insert
        return JsonResponse({"found": False, "db": None}, status=404)
    return JsonResponse({"found": True, "db": author._state.db, "name": author.name})


def write_then_read(request: HttpRequest) -> JsonResponse:
    author = Author.objects.create(name="fresh")
    again = Author.objects.get(pk=author.pk)
    return JsonResponse({"db": again._state.db})


def assign_then_read(request: HttpRequest, pk: int) -> JsonResponse:
    # Assigning a related object asks db_for_write, but writes nothing.
    book = Book(title="unsaved")
    book.author = Author.objects.get(pk=pk)
    again = Author.objects.get(pk=pk)
    return JsonResponse({"db": again._state.db})


def any_author(request: HttpRequest) -> JsonResponse:
    author = Author.objects.order_by("pk").first()
    return JsonResponse({"db": author._state.db if author else None})


async def async_write_then_read(request: HttpRequest) -> JsonResponse:
    author = await Author.objects.acreate(name="async")
    again = await Author.objects.aget(pk=author.pk)
    return JsonResponse({"db": again._state.db})


async def async_any_author(request: HttpRequest) -> JsonResponse:
    author = await Author.objects.order_by("pk").afirst()
    return JsonResponse({"db": author._state.db if author else None})


def log_in(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST["username"], password="pw")
    if user is None:
        return HttpResponse("bad credentials", status=403)
    login(request, user)
    return HttpResponse("ok")


def whoami(request: HttpRequest) -> HttpResponse:
    user = request.user
    return HttpResponse(user.get_username() if user.is_authenticated else "anonymous")


urlpatterns = [
    path("authors/", create_author),
    path("authors/<int:pk>/", show_author),
    path("authors/<int:pk>/assign/", assign_then_read),
    path("write-then-read/", write_then_read),
    path("any/", any_author),
    path("async/write-then-read/", async_write_then_read),
    path("async/any/", async_any_author),
    path("login/", log_in),
    path("whoami/", whoami),
]
