"""``make demo DEMO_KEEP=0``, end to end: the demo a newcomer runs first.

It starts a cluster of its own, migrates, seeds, serves the site with gunicorn
and runs the narrated tour against it. What it guards against: a demo that
fails on a fresh machine, a tour whose figures no longer hold (reads not
spread 2:1, a failed request while a replica dies), and a demo that leaves
PostgreSQL or gunicorn running behind it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_the_demo_tours_the_site_and_leaves_nothing_behind():
    # Under /tmp: the servers run as the postgres account when we are root.
    directory = Path(tempfile.mkdtemp(prefix="demo-cluster-tour-test-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REPLICA_URLS")}
    env["DEMO_KEEP"] = "0"
    command = [sys.executable, str(SITE_DIR / "demo.py"), "--dir", str(directory), "--port", "0"]
    try:
        result = subprocess.run(
            [*command, "up"], env=env, capture_output=True, text=True, timeout=300
        )
        out = result.stdout
        assert result.returncode == 0, out[-6000:] + result.stderr[-3000:]
        # 1. reads spread by weight, none on the primary
        assert "replica_1 : replica_2 = 2.00 : 1" in out
        assert re.search(r"replica_1 120 \(66\.7%\), replica_2 60 \(33\.3%\), primary 0", out)
        # 2. read-your-writes: the primary, then the replicas
        assert re.search(r"served by primary +pin cookie kept", out)
        assert re.search(r"served by replica_\d.* pin cookie dropped", out)
        # 3. a paused replica leaves rotation and comes back
        assert "replica_2 is lagging after" in out
        assert re.search(r"30 page views: replica_1 90 \(100\.0%\), replica_2 0", out)
        assert "Resumed replay: replica_2 is back after" in out
        # 4. a killed replica: no failed request
        assert re.search(r"replica_1 healthy -> down: connection failed", out)
        assert re.search(r"\d+ requests in [\d.]+ s, 0 failed", out)
        # 5. one prober for four processes, and a takeover when it hangs
        assert re.search(r"Monitor connections per node: primary 1, replica_1 1, replica_2 1", out)
        assert re.search(r"The prober: pid \d+ on ", out)
        assert re.search(r"a page served by a reader shows one [\d.]+ s old", out)
        assert re.search(r"SIGSTOP pid (\d+) \(a hung prober\): .*pid (?!\1)\d+ took over", out)
        assert re.search(r"Meanwhile: \d+ requests, 0 failed", out)
        # 6. the health table
        assert "ok: 2 of 2 replicas serve reads" in out
        assert "DEMO_KEEP=0: stopping and removing everything." in out
        assert not directory.exists()
        assert processes_mentioning(str(directory)) == []
    finally:
        if directory.exists():
            subprocess.run([*command, "down"], env=env, capture_output=True, timeout=120)
