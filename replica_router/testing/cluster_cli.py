"""The cluster tool's command line: ``python -m replica_router.testing.cluster``.

Its subcommands (``up``, ``down``, ``status``, ``env``, ``run``, and one per
fault) are listed by ``--help``. ``replica_router/testing/cluster.py`` runs
:func:`main` when run with ``-m``, so the command keeps that module's name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from replica_router.testing.cluster import Cluster, ClusterError
from replica_router.testing.pgbouncer import PgBouncerError


def _print_status(cluster: Cluster) -> None:
    rows = cluster.status()
    # The PgBouncer column only for a cluster that has them.
    bouncers = any(s.pgbouncer_port is not None for s in rows)
    pgbouncer = f"{'pgbouncer':<16}" if bouncers else ""
    print(f"{'node':<12}{'role':<9}{'port':<7}{'pid':<9}{'state':<7}{pgbouncer}replay LSN")
    for s in rows:
        if bouncers:
            pgbouncer = f"{s.pgbouncer_port} {'up' if s.pgbouncer_up else 'down'}"
            pgbouncer = f"{pgbouncer:<16}"
        print(
            f"{s.name:<12}{s.role:<9}{s.port:<7}{s.pid or '-'!s:<9}"
            f"{'up' if s.up else 'down':<7}{pgbouncer}{s.lsn or '-'}"
        )


# Subcommands that act on one node given by name: help text and the method.
_NODE_COMMANDS: dict[str, tuple[str, Callable[[Cluster, str], None]]] = {
    "pause": ("pause WAL replay on a replica", Cluster.pause),
    "resume": ("resume WAL replay on a replica", Cluster.resume),
    "kill": ("SIGKILL a node's postmaster", Cluster.kill),
    "freeze": ("SIGSTOP a node's postmaster and backends (a hung host)", Cluster.freeze),
    "thaw": ("SIGCONT a frozen node", Cluster.thaw),
    "start": ("start a node that is down", Cluster.start),
    "promote": ("promote a replica to a primary of its own", Cluster.promote),
    "rebuild": ("clone a replica from the primary again", Cluster.rebuild),
}


_PGBOUNCER_HELP = "also start a PgBouncer (transaction pooling) in front of each node"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replica_router.testing.cluster",
        description="A local PostgreSQL primary with streaming replicas, on 127.0.0.1.",
    )
    # --dir is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=argparse.SUPPRESS,
        help="cluster directory (default: $REPLICA_ROUTER_CLUSTER_DIR or .cluster)",
    )
    parser.add_argument("--dir", default=os.environ.get("REPLICA_ROUTER_CLUSTER_DIR", ".cluster"))
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    up = command("up", "create and start the cluster (idempotent)")
    up.add_argument("--replicas", type=int, default=2)
    up.add_argument("--pgbouncer", action="store_true", help=_PGBOUNCER_HELP)
    command("down", "stop every node and remove the directory")
    status = command("status", "role, port, pid, up/down and replay LSN per node")
    status.add_argument("--json", action="store_true")
    command("env", "print DATABASE_URL and REPLICA_URLS (and the PgBouncer URLs)")
    for name, (text, _) in _NODE_COMMANDS.items():
        command(name, text).add_argument("name")
    conflicts = command("conflicts", "make a replica cancel queries on recovery conflicts")
    conflicts.add_argument("name")
    conflicts.add_argument("--off", action="store_true", help="undo it")
    delay = command("delay", "set recovery_min_apply_delay on a replica")
    delay.add_argument("name")
    delay.add_argument("seconds", type=float)
    command("stop-primary", "stop the primary (fast shutdown)")
    run = command("run", "bring the cluster up, run a command with its env, tear it down")
    run.add_argument("--replicas", type=int, default=2)
    run.add_argument("--pgbouncer", action="store_true", help=_PGBOUNCER_HELP)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def _up(cluster: Cluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    if cluster.up(args.replicas, pgbouncer=args.pgbouncer):
        print(
            f"cluster up in {cluster.dir} "
            f"({len(cluster.replicas)} replicas, {time.monotonic() - started:.1f}s)"
        )
    else:
        print(f"cluster already running in {cluster.dir}")
    _print_status(cluster)
    return 0


def _down(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.down()
    print(f"cluster in {cluster.dir} is down and removed")
    return 0


def _status(cluster: Cluster, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([asdict(s) for s in cluster.status()], indent=2))
    else:
        _print_status(cluster)
    return 0


def _env(cluster: Cluster, args: argparse.Namespace) -> int:
    for key, value in cluster.env().items():
        print(f"{key}={value}")
    return 0


def _delay(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.delay(args.name, args.seconds)
    return 0


def _conflicts(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.conflicts(args.name, on=not args.off)
    return 0


def _stop_primary(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.stop_primary()
    return 0


def _on_node(cluster: Cluster, args: argparse.Namespace) -> int:
    _, method = _NODE_COMMANDS[args.command]
    method(cluster, args.name)
    return 0


def _run(cluster: Cluster, args: argparse.Namespace) -> int:
    return _run_with_cluster(cluster, args.replicas, args.argv, pgbouncer=args.pgbouncer)


# Each subcommand's handler; it returns the exit status.
_HANDLERS: dict[str, Callable[[Cluster, argparse.Namespace], int]] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "env": _env,
    **dict.fromkeys(_NODE_COMMANDS, _on_node),
    "conflicts": _conflicts,
    "delay": _delay,
    "stop-primary": _stop_primary,
    "run": _run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = Cluster(args.dir)
    try:
        return _HANDLERS[args.command](cluster, args)
    except (ClusterError, PgBouncerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run_with_cluster(
    cluster: Cluster, replicas: int, argv: list[str], *, pgbouncer: bool = False
) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("error: run needs a command after --", file=sys.stderr)
        return 2
    created = not cluster.exists()
    started = time.monotonic()
    cluster.up(replicas, pgbouncer=pgbouncer)
    print(
        f"cluster ready in {time.monotonic() - started:.1f}s: "
        f"primary + {len(cluster.replicas)} replicas"
        f"{', each behind PgBouncer' if cluster.pgbouncers else ''} in {cluster.dir}",
        flush=True,
    )
    try:
        return subprocess.call(argv, env={**os.environ, **cluster.env()})
    finally:
        # A cluster the caller started by hand is theirs to stop.
        if created:
            cluster.down()
