"""One line saying what a benchmark ran on, printed with its figures."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def postgres_version() -> str:
    """The PostgreSQL server binaries' version (those the local cluster runs)."""
    try:
        out = subprocess.run(["postgres", "--version"], capture_output=True, text=True)
    except OSError:
        try:
            bindir = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            out = subprocess.run(
                [f"{bindir}/postgres", "--version"], capture_output=True, text=True
            )
        except (OSError, subprocess.CalledProcessError):
            return "PostgreSQL ?"
    return out.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ")


def describe(replicas: int | None) -> str:
    """The machine and versions; ``replicas`` None for a bench that runs no server."""
    import django
    import psycopg
    import psycopg_pool

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"Django {django.get_version()}, psycopg {psycopg.__version__}, "
        f"psycopg_pool {psycopg_pool.__version__}"
        + (
            ""
            if replicas is None
            else f"; {postgres_version()}, primary + {replicas} replicas on this machine"
        )
    )
