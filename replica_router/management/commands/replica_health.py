"""``manage.py replica_health``: probe the primary and every replica now, and report.

The command probes live, with a :class:`~replica_router.health.monitor.Monitor` of its
own and connections of its own: it does not depend on, or talk to, the monitor
of any running server. See docs/replica-health.md for the columns, the JSON schema and
the exit statuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from replica_router.conf import RouterConfig, get_config
from replica_router.discovery import Discovery
from replica_router.exceptions import ReplicaRouterConfigError
from replica_router.health.factory import health_store
from replica_router.health.model import Discovered, NodeStatus, Sharing, Snapshot, State
from replica_router.health.monitor import Monitor
from replica_router.health.sharing import Guarded, StoreUnavailable
from replica_router.report import health_document, pool_stats

#: The table's columns, in order.
COLUMNS: Sequence[str] = (
    "ALIAS",
    "ADDRESS",
    "ROLE",
    "WEIGHT",
    "STATE",
    "LAG S",
    "LAG BYTES",
    "CONFLICTS",
    "CONFL/S",
    "RTT MS",
    "POOL SIZE",
    "IDLE",
    "WAITING",
    "SINCE",
    "REASON",
    "LAST ERROR",
)
_STATE_COLUMN = COLUMNS.index("STATE")
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


class Command(BaseCommand):
    help = (
        "Probe the primary and every replica now and show each node's state, lag, "
        "recovery conflicts, probe round-trip and connection pool. With --check, exit "
        "with status 0 when every replica serves reads, 1 when some do not, 2 when "
        "none does or the primary is unreachable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            choices=["table", "json"],
            default="table",
            help="table (the default) or json: the schema documented in docs/replica-health.md; "
            "with --watch, one JSON document per line.",
        )
        parser.add_argument(
            "--watch",
            type=_seconds,
            metavar="SECONDS",
            help="Probe again every SECONDS until Ctrl-C. States build up across "
            "refreshes (recovery needs RECOVERY_CHECKS good probes in a row).",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit with status 0 (ok), 1 (degraded) or 2 (unavailable). "
            "Combine with -v 0 to print nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = get_config()
        except ReplicaRouterConfigError as exc:
            raise CommandError(str(exc)) from exc
        watch: float | None = options["watch"]
        if watch is not None:
            # The circuit breaker backs a down node off by whole intervals: count
            # them in refreshes.
            config = replace(config, check_interval=watch)
        quiet = options["verbosity"] < 1
        as_json = options["format"] == "json"

        discovery = (
            None
            if config.discovery is None
            else Discovery(config.discovery, primary=config.primary, static=config.replicas)
        )
        monitor = Monitor(config=config, balancer=None, discovery=discovery)
        exit_code = 0
        try:
            while True:
                monitor.follow_discovery()
                snapshot = replace(monitor.run_cycle(), sharing=self._fleet(config))
                exit_code = snapshot.exit_code
                if not quiet:
                    self._show(snapshot, as_json=as_json, watch=watch)
                if watch is None:
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            if watch is None:
                raise
            # Ctrl-C is how --watch ends: no traceback, and --check reports the
            # last refresh.
        finally:
            monitor.stop()
        if options["check"] and exit_code:
            sys.exit(exit_code)

    # -- output ----------------------------------------------------------------

    def _show(self, snapshot: Snapshot, *, as_json: bool, watch: float | None) -> None:
        if as_json:
            document = health_document(snapshot, topology=True)
            if watch is None:
                self.stdout.write(json.dumps(document, indent=2))
            else:  # JSON Lines: one document per refresh
                self.stdout.write(json.dumps(document, separators=(",", ":")))
            return
        text = self._table(snapshot)
        if watch is not None:
            header = (
                f"Every {watch:g}s: replica_health at "
                f"{snapshot.taken_at.isoformat(timespec='seconds')} (Ctrl-C to stop)"
            )
            prefix = _CLEAR_SCREEN if self.stdout.isatty() else ""
            text = f"{prefix}{header}\n\n{text}\n"
        self.stdout.write(text)

    def _table(self, snapshot: Snapshot) -> str:
        rows = [list(COLUMNS)]
        rows.extend(self._cells(node) for node in snapshot.nodes)
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        lines = []
        for index, row in enumerate(rows):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            cells[-1] = row[-1]  # no trailing blanks
            if index:
                node = snapshot.nodes[index - 1]
                cells[_STATE_COLUMN] = self._paint(node.state)(cells[_STATE_COLUMN])
            lines.append("  ".join(cells))
        lines.append("")
        lines.append(self._summary(snapshot))
        return "\n".join(lines)

    def _cells(self, node: NodeStatus) -> list[str]:
        pool = pool_stats(node.alias)
        return [
            node.alias,
            f"{node.host}:{node.port}",
            node.role,
            _dash(node.weight),
            str(node.state),
            "-" if node.lag_seconds is None else f"{node.lag_seconds:.3f}",
            _dash(node.lag_bytes),
            _dash(node.recovery_conflicts),
            "-"
            if node.recovery_conflicts_per_second is None
            else f"{node.recovery_conflicts_per_second:.2f}",
            "-" if node.rtt is None else f"{node.rtt * 1000:.1f}",
            "-" if pool is None else str(pool["size"]),
            "-" if pool is None else str(pool["idle"]),
            "-" if pool is None else str(pool["waiting"]),
            node.since.isoformat(timespec="seconds"),
            node.reason,
            _dash(node.last_error),
        ]

    def _paint(self, state: State) -> Callable[[str], str]:
        if state is State.HEALTHY:
            return self.style.SUCCESS
        if state in (State.DOWN, State.EJECTED):
            return self.style.ERROR
        return self.style.WARNING

    @staticmethod
    def _fleet(config: RouterConfig) -> Sharing | None:
        """Who probes for the site's processes (HEALTH_SHARING), read from the store."""
        store = health_store(config)
        if store is None:
            return None
        guarded = Guarded(store, deadline=config.check_timeout)
        try:
            lease = guarded.call(store.lease)
            document = guarded.call(store.read)
        except StoreUnavailable:
            lease = document = None
            unreachable = True
        else:
            unreachable = False
        finally:
            guarded.close()
        holder = (lease or {}).get("holder") or {}
        return Sharing(
            mode=config.health_sharing,
            probing_here=False,
            fallback=unreachable,
            prober_host=holder.get("host"),
            prober_pid=holder.get("pid"),
            lease_since=(lease or {}).get("since"),
            published_at=(document or {}).get("published_at"),
        )

    @staticmethod
    def _prober_line(sharing: Sharing) -> str:
        if sharing.fallback:
            return f"prober: the {sharing.mode} health store cannot be reached"
        if sharing.prober_pid is None:
            return f"prober: no process holds the {sharing.mode} lease"
        shown = sharing.as_dict(topology=False)
        snapshot_age = shown["snapshot_age_seconds"]
        return (
            f"prober: pid {sharing.prober_pid} on {sharing.prober_host} "
            f"({sharing.mode} mode), lease held {shown['lease_age_seconds']:.1f} s, "
            f"snapshot {'-' if snapshot_age is None else f'{snapshot_age:.1f}'} s old"
        )

    @staticmethod
    def _discovery_line(discovered: Discovered) -> str:
        listed = f"{discovered.replicas} replicas listed"
        if discovered.changed_at is not None:
            changed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(discovered.changed_at))
            listed = f"{listed} (changed {changed})"
        if discovered.error is not None:
            return f"discovery: {discovered.source} is failing ({discovered.error}); {listed} kept"
        return f"discovery: {discovered.source}, {listed}"

    def _summary(self, snapshot: Snapshot) -> str:
        overall = snapshot.overall
        serving = sum(1 for node in snapshot.replicas if node.in_rotation)
        total = len(snapshot.replicas)
        detail = f"{serving} of {total} replicas serve reads"
        # Probed and in rotation, but picked never: a replica being rolled out.
        unweighted = sum(1 for node in snapshot.replicas if node.in_rotation and node.weight == 0)
        if unweighted:
            detail = f"{detail}, {unweighted} of them at weight 0 (given no reads)"
        if snapshot.primary.state is State.DOWN:
            detail = f"the primary is unreachable; {detail}"
        text = f"{overall}: {detail} (exit status {snapshot.exit_code})"
        if snapshot.sharing is not None:
            text = f"{self._prober_line(snapshot.sharing)}\n{text}"
        if snapshot.discovery is not None:
            text = f"{self._discovery_line(snapshot.discovery)}\n{text}"
        if overall == "ok":
            return self.style.SUCCESS(text)
        if overall == "degraded":
            return self.style.WARNING(text)
        return self.style.ERROR(text)
