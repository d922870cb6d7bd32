"""Process-wide state follows the settings: one receiver resets it all."""

from __future__ import annotations

import os

from django.test import override_settings

from replica_router import runtime
from replica_router.conf import get_config

SWAPPED = {"PRIMARY": "replica_2", "REPLICAS": ["replica_1"], "HEALTH_CHECKS": False}


def test_a_settings_change_rebuilds_the_config_the_roles_and_the_routing():
    before = runtime.current or runtime.load()
    assert runtime.role_of("default") == runtime.PRIMARY
    with override_settings(REPLICA_ROUTER=SWAPPED):
        assert runtime.current is None
        assert get_config().primary == "replica_2"
        assert runtime.role_of("default") is None
        assert runtime.role_of("replica_2") == runtime.PRIMARY
        assert runtime.role_of("replica_1") == runtime.REPLICA
        swapped = runtime.load()
        assert swapped is not before and swapped.primary == "replica_2"
        assert runtime.get_monitor() is None
    assert runtime.current is None
    assert runtime.role_of("default") == runtime.PRIMARY
    assert runtime.load().primary == "default"


def test_other_settings_leave_the_routing_alone():
    routing = runtime.load()
    with override_settings(USE_TZ=False):
        assert runtime.current is routing


def test_migrate_keeps_reads_on_the_primary_without_starting_the_monitor():
    with override_settings(REPLICA_ROUTER={"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 60}):
        routing = runtime.load()
        assert routing.awaiting_monitor
        runtime._on_pre_migrate()
        try:
            assert not routing.start_monitor()
            assert routing.monitor is not None and not routing.monitor.running
        finally:
            runtime._on_post_migrate()


def test_a_forked_child_starts_its_own_monitor():
    with override_settings(REPLICA_ROUTER={"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 60}):
        routing = runtime.load()
        routing.awaiting_monitor = False  # as if the parent had started it
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports what it inherited, then leaves at once
            os.write(write, b"1" if runtime.current.awaiting_monitor else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1"
        assert not routing.awaiting_monitor  # the parent's own flag is untouched
