"""Cutting this process's connections to a replica that stopped answering.

A hung server (a stopped VM, a network partition, a SIGSTOPped postmaster)
sends no error and no RST: a read waiting on it, or a connection being set up
to it, waits as long as the hang lasts, up to the operating system's TCP
timeouts. When the health monitor finds a replica down, every TCP connection
this process has to that server is shut down at the socket, so that each read
waiting on one gets an error at once and the failover engine runs it again
elsewhere.

The sockets are found the way ``ss`` finds them, in ``/proc/self/net/tcp`` and
``tcp6`` and ``/proc/self/fd``, so no bookkeeping is needed on the path of a
query. Each is shut down through a duplicate of its descriptor whose inode is
checked first, so a descriptor closed and reused meanwhile is never touched.
Where there is no ``/proc`` (macOS), nothing is cut: reads wait for the server
or for their own timeouts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path
from typing import Final

__all__ = ["cut_connections_to"]

_PROC: Final = Path("/proc/self")
# TCP states worth cutting: ESTABLISHED and SYN_SENT (a connection being made).
_LIVE_STATES: Final = frozenset({"01", "02"})


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    """The (IP, port) pairs ``host`` resolves to."""
    try:
        infos = socket.getaddrinfo(host or "localhost", port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(ipaddress.ip_address(info[4][0])), port) for info in infos}


def _decode(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (as /proc/net/tcp prints it) -> ``("127.0.0.1", 8080)``."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    # The kernel prints each 32-bit word of the address in host byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 16 and words.startswith(b"\0" * 10 + b"\xff\xff"):
        words = words[12:]  # an IPv4 address seen through an IPv6 socket
    return str(ipaddress.ip_address(words)), int(port_hex, 16)


def _inodes_to(targets: set[tuple[str, int]]) -> set[int]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] in _LIVE_STATES and _decode(fields[2]) in targets:
                inodes.add(int(fields[9]))
    return inodes


def _shut_down(fd: int, inode: int) -> bool:
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    with socket.socket(fileno=duplicate) as sock:
        if os.fstat(duplicate).st_ino != inode:
            return False  # closed and reused since it was listed
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
            return True
    return False


def cut_connections_to(host: str, port: int) -> int:
    """Shut down every TCP connection of this process to ``host:port``; returns how many."""
    inodes = _inodes_to(_addresses(host, port))
    if not inodes:
        return 0
    cut = 0
    try:
        entries = list((_PROC / "fd").iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            cut += _shut_down(int(entry.name), int(target[8:-1]))
    return cut
