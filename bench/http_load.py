"""The sample site under ``wrk``: the HTTP workload that bench_http.py and
bench_pgpool.py both run, so that their figures come from the same set-up.

gunicorn runs a worker per core (2 x 4 threads by default): one process's
Python runs on one core at a time. It closes each client connection after its
response (``--keep-alive 0``, as behind nginx's default proxying), so that new
connections go to whichever worker is free; with keep-alive, ``wrk``'s
connections stay with the worker that happened to accept them, and one worker
may get them all. Each configuration is a set of environment variables for the
site (``DATABASE_URL``, ``REPLICA_URLS``), served in rounds that alternate the
configurations, so that a shared machine's noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "sample_site"

# 70 % book pages with their reviews, 30 % pages of the book list.
LUA = """
math.randomseed(42)
request = function()
  if math.random() < 0.3 then
    return wrk.format("GET", "/?page=" .. math.random(1, 20))
  end
  return wrk.format("GET", "/books/" .. math.random(1, %(books)d) .. "/")
end
"""

#: What ``run_rounds`` reports per configuration: medians of rounds, except
#: ``max`` (the slowest request of all rounds) and the error counts (sums).
FIGURES = ("rps", "p50", "p99", "max", "errors", "socket_errors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def site_env() -> dict[str, str]:
    """This process's environment minus the site's database settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REPLICA_URLS", "DJANGO_SETTINGS_MODULE")
    }
    env["SECRET_KEY"] = "bench-only-not-secret"
    return env


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SITE,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def seed_shop(primary_url: str, books: int) -> None:
    """The same rows on every run: flush resets the ids too, which the Lua script draws from."""
    env = {**site_env(), "DATABASE_URL": primary_url, "REPLICA_URLS": ""}
    manage("migrate", "--verbosity", "0", env=env)
    manage("flush", "--no-input", env=env)
    manage("seed", "--authors", "100", "--books", str(books), "--reviews", str(books * 3), env=env)


def serve(env: dict[str, str], port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "bookshop_site/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--keep-alive",
            "0",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        cwd=SITE,
        env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the sample site did not start")
        time.sleep(0.1)


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        return _milliseconds(match.group(1), match.group(2))

    # "Latency   1.23ms  456.00us  12.34ms   78.90%": average, stdev, max, +/- stdev.
    slowest = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", out, re.MULTILINE)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    assert rps and slowest, out
    return {
        "rps": float(rps.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "max": _milliseconds(slowest.group(1), slowest.group(2)),
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def add_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> None:
    """The workload's options, which ``run_rounds`` reads."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--books", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)


def run_rounds(
    configs: dict[str, dict[str, str]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Serve each configuration in turn, round after round; a 2 s warm-up first
    each time (the pools fill, the caches warm), then a measured run."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % {"books": args.books})
    try:
        for _ in range(args.rounds):
            for name, urls in configs.items():
                port = free_port()
                server = serve({**site_env(), **urls}, port, args.workers, args.threads)
                try:
                    wrk(port, Path(script.name), 2, args.connections)
                    runs[name].append(wrk(port, Path(script.name), args.seconds, args.connections))
                finally:
                    server.send_signal(signal.SIGTERM)
                    server.wait(30)
    finally:
        os.unlink(script.name)
    return {
        name: {
            "rps": statistics.median(run["rps"] for run in measured),
            "p50": statistics.median(run["p50"] for run in measured),
            "p99": statistics.median(run["p99"] for run in measured),
            "max": max(run["max"] for run in measured),
            "errors": sum(run["errors"] for run in measured),
            "socket_errors": sum(run["socket_errors"] for run in measured),
        }
        for name, measured in runs.items()
    }
