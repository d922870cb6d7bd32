"""Monotonic reads on and off side by side: requests that saw a counter go back.

Run with ``make bench`` (it starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``). The scenario of issue 14, shared with
``tests/integration/test_consistency.py`` (see ``testbed/monotonic.py``): two
replicas in rotation, ``replica_1`` applying WAL 1.5 s late, both under
``MAX_LAG_SECONDS`` (10 here); a counter bumped on the primary about every
10 ms by a thread with its own connection; ``--requests`` requests through
Django's test Client, with the pinning middleware, each reading the counter six
times (plain ORM reads, routed as usual). A request *went back* when a later
read returned a smaller value than an earlier one. ``MONOTONIC_READS`` on, then
off, in the same process on the same cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")

if not os.environ.get("REPLICA_ROUTER_CLUSTER_DIR"):
    sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")

import django  # noqa: E402
from machine import describe  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from replica_router.conf import DEFAULTS  # noqa: E402
from replica_router.testing.cluster import Cluster  # noqa: E402
from testbed.monotonic import (  # noqa: E402
    DELAY_SECONDS,
    DELAYED,
    MAX_LAG_SECONDS,
    Outcome,
    configured,
    lagging_counter,
    measure,
    through_pinned_requests,
    through_requests,
)
from testbed.monotonic_urls import READS_PER_REQUEST  # noqa: E402

SETTING = "MONOTONIC_READS"


def run(
    pk: int, requests: int, monotonic: bool, supported: bool, *, pinned: bool = False
) -> Outcome:
    # A version without the setting would reject the key: leave it out there.
    extra = {SETTING: monotonic} if supported else {}
    through = through_pinned_requests if pinned else through_requests
    with configured(PIN_SECONDS=600.0, **extra):
        outcome = measure(pk, through(pk, requests))
    if not outcome.replicas_stayed_in_rotation:
        sys.exit(
            f"{SETTING} {'on' if monotonic else 'off'}: a replica left rotation during the "
            f"run ({outcome.rotation_before} -> {outcome.rotation_after}, "
            f"{outcome.state_changes}); the figures would not measure the scenario."
        )
    return outcome


def behind_earlier(outcome: Outcome) -> int:
    """Requests that read a value older than one an earlier request read."""
    count, highest = 0, None
    for group in outcome.groups:
        values = [value for value, _ in group]
        if highest is not None and min(values) < highest:
            count += 1
        highest = max(values) if highest is None else max(highest, *values)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()

    cluster = Cluster(os.environ["REPLICA_ROUTER_CLUSTER_DIR"])
    call_command("migrate", verbosity=0)
    cluster.wait_replayed()
    supported = SETTING in DEFAULTS
    try:
        with lagging_counter(cluster, "app", cluster.delay) as pk:
            on = run(pk, args.requests, True, supported)
            off = run(pk, args.requests, False, supported)
            pinned_on = run(pk, args.requests, True, supported, pinned=True)
            pinned_off = run(pk, args.requests, False, supported, pinned=True)
    finally:
        cluster.delay(DELAYED, 0)

    print(
        f"monotonic: {args.requests} requests of {READS_PER_REQUEST} reads, one replica "
        f"{DELAY_SECONDS:g} s behind: {SETTING} on: {on.went_back} went back "
        f"(replica share {on.replica_share * 100:.1f} %); off: {off.went_back} went back "
        f"(replica share {off.replica_share * 100:.1f} %)"
    )
    print(
        f"monotonic across requests: a client that wrote, then {args.requests} requests "
        f"within PIN_SECONDS: on: {behind_earlier(pinned_on)} went back from an earlier "
        f"request (replica share {pinned_on.replica_share * 100:.1f} %); off: "
        f"{behind_earlier(pinned_off)} (replica share {pinned_off.replica_share * 100:.1f} %)"
    )
    if not supported:
        print(f"({SETTING} is not a setting of this version: both runs route alike)")
    print(describe(len(cluster.replicas)))
    for name, outcome in (("on", on), ("off", off)):
        lag = outcome.delayed_lag_seconds
        print(
            f"{name:3} served by {dict(sorted(outcome.served.items()))}; monitor: "
            f"{DELAYED} {'?' if lag is None else f'{lag:.1f}'} s behind, in rotation "
            f"throughout (MAX_LAG_SECONDS {MAX_LAG_SECONDS:g})"
        )


if __name__ == "__main__":
    main()
