"""The page of the monotonic-reads scenario: one request that reads a counter six times.

Each read is a plain ORM read, routed by the router like any other; the response
lists every value read and the alias that served it (``obj._state.db``).
"""

from __future__ import annotations

from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from testbed.testapp.models import Counter

#: Reads of the counter in one request.
READS_PER_REQUEST = 6


def read_counter(request: HttpRequest, pk: int) -> JsonResponse:
    if request.method == "POST":  # a write, which gives the client a pin cookie
        Counter.objects.filter(pk=pk).update(value=F("value") + 1)
    reads = []
    for _ in range(READS_PER_REQUEST):
        counter = Counter.objects.get(pk=pk)
        reads.append([counter.value, counter._state.db])
    return JsonResponse({"reads": reads})


urlpatterns = [path("counter/<int:pk>/", csrf_exempt(read_counter))]
