"""Switchover and failover under read and write load: the router in front of Patroni.

Run with ``make bench``, which starts a Patroni cluster (etcd plus one Patroni
per node, ``replica_router.testing.patroni``) and sets
``REPLICA_ROUTER_PATRONI_DIR``. Reader threads read through the router while
a writer writes rows and reads each back in a ``causal()`` context; Patroni
switches over (``patronictl switchover``), then the new leader is killed.
Prints one line for each: the reads and writes, those that failed, the
longest time no write committed, and the reads that missed their own write.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "testbed.settings_patroni"

if not os.environ.get("REPLICA_ROUTER_PATRONI_DIR"):
    sys.exit("Run it with 'make bench', which starts the Patroni cluster it measures against.")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from replica_router.runtime import get_monitor  # noqa: E402
from replica_router.testing.patroni import LOOP_WAIT, TTL, PatroniCluster  # noqa: E402
from testbed.switchover import Traffic, change_under_load  # noqa: E402


def main() -> None:
    patroni: PatroniCluster = settings.PATRONI
    call_command("migrate", verbosity=0)
    patroni.wait_streaming()
    switchover = change_under_load(patroni, patroni.switchover)
    print(switchover.line("switchover"), flush=True)
    killed = change_under_load(patroni, patroni.kill_leader)
    print(killed.line("leader killed"), flush=True)
    patroni.start(killed.old)
    patroni.wait_streaming()
    monitor = get_monitor()
    if monitor is not None:
        monitor.stop()
    router = settings.REPLICA_ROUTER
    refresh, interval = router["DISCOVERY"]["REFRESH_SECONDS"], router["CHECK_INTERVAL"]
    print(
        f"{Traffic.readers} reader threads and 1 writer; Patroni 3 nodes, synchronous mode, "
        f"ttl {TTL} s, loop_wait {LOOP_WAIT} s; primary: libpq multi-host, "
        f"target_session_attrs=read-write; replicas from Patroni's REST API every "
        f"{refresh:g} s; CHECK_INTERVAL {interval:g} s"
    )


if __name__ == "__main__":
    main()
