"""Settings for the tests marked ``patroni``: the router in front of a Patroni cluster.

``make test`` runs them in a pass of their own, under ``python -m
replica_router.testing.patroni run``, which brings the cluster up and sets
REPLICA_ROUTER_PATRONI_DIR. The primary is every node as one libpq multi-host
alias that takes the writable one (docs/discovery.md); the replicas are what
Patroni's REST API lists, found by discovery.
"""

from __future__ import annotations

import os

from replica_router.testing.patroni import DIR_VARIABLE, PatroniCluster
from testbed.settings import *  # noqa: F403
from testbed.settings import REPLICA_ROUTER as _BASE

PATRONI = PatroniCluster.load(os.environ[DIR_VARIABLE])
_hosts = [("127.0.0.1", node.port) for node in PATRONI.nodes.values()]

DATABASES = {
    "default": {
        "ENGINE": "replica_router.backends.postgresql",
        "HOST": ",".join(host for host, _ in _hosts),
        "PORT": ",".join(str(port) for _, port in _hosts),
        "NAME": "app",
        "USER": "postgres",
        "OPTIONS": {"target_session_attrs": "read-write"},
    }
}
REPLICA_ROUTER = {
    **_BASE,
    "REPLICAS": {},
    "CHECK_INTERVAL": 0.2,
    "CHECK_TIMEOUT": 0.5,
    "RECOVERY_CHECKS": 2,
    "DISCOVERY": {
        "SOURCE": "patroni",
        "URLS": PATRONI.api_urls(),
        "REFRESH_SECONDS": 1.0,
        "JITTER_SECONDS": 0,
        "TIMEOUT_SECONDS": 1.0,
        "WARMUP_SECONDS": 0,
        "DRAIN_SECONDS": 2.0,
    },
}
