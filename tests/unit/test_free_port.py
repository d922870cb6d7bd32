"""Test servers get ports the kernel never hands to an outgoing connection:
one stopped and started again frees its port meanwhile, and must get it back
(a client socket took a halted dnsmasq's once: "Address already in use")."""

from __future__ import annotations

from pathlib import Path

from replica_router.testing.processes import free_port


def test_ports_are_below_the_kernels_ephemeral_range():
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert all(free_port() < low for _ in range(20))
    assert all(free_port(udp=True) < low for _ in range(20))
