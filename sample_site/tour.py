#!/usr/bin/env python
"""The demo's narrated tour: real HTTP traffic against the running bookshop.

``make demo`` runs it once the site is up; run it again against the running
demo with ``python sample_site/demo.py tour`` (or this script). It drives the
site with plain ``urllib`` (cookies kept like a browser's), reads the per-alias
read counters at /replicas/status.json, and breaks the local cluster on
purpose: the steps are in ``tour_steps.py``, the HTTP client in
``tour_client.py``, the traffic and watchers that run beside a step in
``tour_background.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bookshop_site.local_cluster import default_cluster_dir  # noqa: E402
from demo_site import DemoError, manage_command, site_env, site_url  # noqa: E402
from replica_router.testing.cluster import Cluster, ClusterError  # noqa: E402
from tour_steps import Tour  # noqa: E402


def run_tour(directory: Path, cluster: Cluster, url: str) -> None:
    """The tour against the site at ``url``, served from the demo in ``directory``."""
    Tour(url, cluster, manage_command(), site_env(directory)).run()


def main(argv: list[str] | None = None) -> int:
    """Run the tour against the running demo (``demo.py tour`` does the same)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="the demo's cluster directory (default: the Makefile's)")
    args = parser.parse_args(argv)
    directory = (Path(args.dir) if args.dir else default_cluster_dir()).resolve()
    try:
        run_tour(directory, Cluster(directory), site_url(directory))
        return 0
    except (DemoError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
