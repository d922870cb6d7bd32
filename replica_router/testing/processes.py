"""The processes and ports of this machine, as the local servers' tools see them.

Linux ``/proc`` is read directly (no ``ps``, no psutil): where there is none,
the lookups find nothing.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
from pathlib import Path
from typing import Final

__all__ = [
    "children",
    "cmdline",
    "end",
    "free_port",
    "process_alive",
    "process_state",
    "processes_with",
]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat_fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat_fields[1]) == pid:
            found.append(int(proc.name))
    return found


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, T for stopped, Z for zombie...). Linux /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie). Linux /proc."""
    state = process_state(pid)
    return state is not None and state != "Z"


def cmdline(pid: int) -> bytes:
    """The command line of ``pid``, its arguments separated by NUL bytes (empty if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def processes_with(*markers: bytes) -> list[int]:
    """Pids of processes whose command line contains every marker. Linux /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            line = cmdline(int(proc.name))
            if line and all(marker in line for marker in markers):
                found.append(int(proc.name))
    return found


#: Ports below every common ephemeral range (Linux starts at 32768, macOS and
#: Windows at 49152). A test server stopped and started again on its port (a
#: killed replica, a halted DNS server) frees it meanwhile, and a port the
#: kernel hands out to outgoing connections (a test's many client sockets)
#: could be taken in that moment: dnsmasq then failed with "Address already in use".
PORTS: Final = range(20000, 32768)


def free_port(*, udp: bool = False) -> int:
    """A port on 127.0.0.1, outside the ephemeral range, that nothing listens
    on at this moment: for TCP, and for UDP too if ``udp``."""
    while True:
        port = random.choice(PORTS)  # any free one will do: no seed needed
        with contextlib.ExitStack() as sockets:
            kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
            try:
                for kind in kinds:
                    sockets.enter_context(socket.socket(socket.AF_INET, kind)).bind(
                        ("127.0.0.1", port)
                    )
            except OSError:
                continue
        return port


def end(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a child server, SIGKILL it if it has not exited after ``timeout``
    seconds, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
