from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from replica_router.views import metrics, replica_health
from testbed.testapp.models import Author


def author_names(request: HttpRequest) -> HttpResponse:
    return HttpResponse("\n".join(Author.objects.values_list("name", flat=True)))


urlpatterns = [
    path("health/replicas/", replica_health),
    path("metrics", metrics),
    path("authors/", author_names),
]
