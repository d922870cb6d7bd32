"""Views for load balancers, dashboards and Prometheus.

Wire them in your URLconf::

    from replica_router.views import metrics, replica_health

    urlpatterns = [
        path("health/replicas/", replica_health),
        path("metrics", metrics),
    ]

Neither opens a database connection: ``replica_health`` serves what this
process's health monitor last published (docs/replica-health.md gives the schema), and
``metrics`` serves prometheus-client's default registry (docs/metrics.md).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from replica_router.conf import get_config
from replica_router.context import use_primary
from replica_router.report import health_document
from replica_router.runtime import get_monitor, register_metrics

__all__ = ["metrics", "replica_health"]


@require_safe
def replica_health(request: HttpRequest) -> JsonResponse:
    """The replicas' health as JSON: HTTP 503 when no replica serves reads or the
    primary is unreachable, 200 otherwise (``degraded`` still serves).

    Staff users see the topology (hosts, ports, weights, reasons, errors, WAL
    positions, round-trips, pools); everyone else sees each alias's role, state,
    rotation and lag only. With health checks off, or no replica configured,
    the status is ``"unmonitored"`` and there are no nodes.
    """
    monitor = get_monitor()
    status = 200
    document: dict[str, Any]
    if monitor is None:
        document = {"status": "unmonitored", "taken_at": None, "nodes": []}
    else:
        if not monitor.running:
            # The router starts it on the first read to a replica; a process
            # that has served no read yet (or was forked) starts it here.
            monitor.start(wait=True)
        snapshot = monitor.snapshot
        document = health_document(snapshot, topology=_is_staff(request))
        if snapshot.exit_code == 2:
            status = 503
    response = JsonResponse(document, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _is_staff(request: HttpRequest) -> bool:
    # Sites without AuthenticationMiddleware have no request.user: anonymous.
    # request.user is lazy: loading it reads the session and the user, and a
    # health check must not depend on the replicas it reports on.
    with use_primary():
        user = getattr(request, "user", None)
        return bool(getattr(user, "is_staff", False))


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """This process's Prometheus metrics, in the text exposition format.

    It serves prometheus-client's default registry: the ``replica_router_*``
    metrics (with ``METRICS`` on) and whatever else is registered there. It
    needs the ``metrics`` extra and raises ImproperlyConfigured without it.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        raise ImproperlyConfigured(
            "replica_router.views.metrics needs prometheus-client: "
            "pip install 'django-replica-router[metrics]'."
        ) from None
    if get_config().metrics:
        register_metrics()  # so that a scrape before the first query sees them too
    response = HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
