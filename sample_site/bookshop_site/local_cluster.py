"""Default database URLs for the sample site: the local demo cluster.

The site is configured by environment variables only. When ``DATABASE_URL`` is
not set, the URLs come from the local cluster that ``make demo`` and
``make serve`` start, in the directory named by ``REPLICA_ROUTER_CLUSTER_DIR``,
or else in the Makefile's default demo directory.

This module imports nothing from Django, so ``demo.py`` can use it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The checkout this sample site lives in (the Makefile's directory).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Read weights of the demo's replicas, in order: replica_1 gets twice the
#: reads of replica_2 (and of any further replica).
DEMO_WEIGHTS = (2, 1)

#: Django's native psycopg pool on every alias. gunicorn runs 8 threads per
#: worker, so 12 connections is enough for every thread plus the failover
#: backend's short-lived stand-ins. The replica pools keep the env helper's
#: 1 s ``pool_timeout``: a read must not wait long for a replica that is gone.
PRIMARY_POOL = "pool_min_size=2&pool_max_size=12&pool_timeout=5"
REPLICA_POOL = "pool_min_size=2&pool_max_size=12"


def cksum(data: bytes) -> int:
    """POSIX ``cksum`` (CRC-32 with the length appended), as the Makefile computes it."""
    crc = 0

    def feed(byte: int) -> None:
        nonlocal crc
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF

    for byte in data:
        feed(byte)
    length = len(data)
    while length:
        feed(length & 0xFF)
        length >>= 8
    return ~crc & 0xFFFFFFFF


def default_cluster_dir() -> Path:
    """``/tmp/demo-cluster-<cksum of the checkout's path>``: the Makefile's ``DEMO_DIR``.

    Under /tmp because, run as root, the servers run as the postgres account,
    which must be able to reach the directory. One per checkout, so two
    checkouts on one machine do not share a demo.
    """
    return Path(f"/tmp/demo-cluster-{cksum(str(REPO_ROOT).encode())}")


def cluster_dir() -> Path:
    """The cluster directory the site uses when ``DATABASE_URL`` is not set."""
    configured = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
    return Path(configured) if configured else default_cluster_dir()


class NoLocalCluster(Exception):
    """There is no local cluster to take default URLs from."""


def cluster_urls(directory: Path) -> dict[str, str]:
    """``DATABASE_URL`` and ``REPLICA_URLS`` for the cluster in ``directory``.

    The URLs carry the demo's weights (2:1) and pool sizes as query parameters,
    exactly as one would write them by hand in the environment.
    """
    try:
        ports: dict[str, int] = json.loads((directory / "cluster.json").read_text())["ports"]
    except (OSError, ValueError, KeyError) as exc:
        raise NoLocalCluster(
            f"DATABASE_URL is not set and there is no local cluster in {directory} "
            f"({type(exc).__name__}). Run 'make serve' or 'make demo' to start one, point "
            "REPLICA_ROUTER_CLUSTER_DIR at another, or set DATABASE_URL (and REPLICA_URLS)."
        ) from None
    replicas = [name for name in ports if name != "primary"]
    replica_urls = []
    for index, name in enumerate(replicas):
        weight = DEMO_WEIGHTS[index] if index < len(DEMO_WEIGHTS) else DEMO_WEIGHTS[-1]
        replica_urls.append(_url(ports[name], f"weight={weight}&{REPLICA_POOL}"))
    return {
        "DATABASE_URL": _url(ports["primary"], PRIMARY_POOL),
        "REPLICA_URLS": ",".join(replica_urls),
    }


def _url(port: int, query: str) -> str:
    # The cluster's superuser, trusted on 127.0.0.1; database "app".
    return f"postgres://postgres@127.0.0.1:{port}/app?{query}"
