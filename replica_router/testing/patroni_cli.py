"""The Patroni test cluster's command line: ``python -m replica_router.testing.patroni run``.

``replica_router/testing/patroni.py`` runs :func:`main` when run with ``-m``,
so the command keeps that module's name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from replica_router.testing.patroni import DIR_VARIABLE, PatroniCluster, PatroniError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m replica_router.testing.patroni run --dir DIR [--nodes 3] -- COMMAND...``:
    bring a Patroni cluster up, run COMMAND with ``REPLICA_ROUTER_PATRONI_DIR``
    set to DIR, and take the cluster down again, whatever COMMAND does."""
    argv = sys.argv[1:] if argv is None else argv
    own, command = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(prog="python -m replica_router.testing.patroni")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--dir", default=".patroni")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(own)
    if not command:
        parser.error("run needs a command after --")
    cluster = PatroniCluster(args.dir)
    started = time.monotonic()
    try:
        cluster.up(args.nodes)
        print(
            f"patroni cluster ready in {time.monotonic() - started:.1f}s: "
            f"{args.nodes} nodes in {cluster.directory}, leader {cluster.leader()}",
            file=sys.stderr,
        )
        return subprocess.call(command, env={**os.environ, DIR_VARIABLE: str(cluster.directory)})
    except PatroniError as exc:
        print(f"patroni: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.down()
