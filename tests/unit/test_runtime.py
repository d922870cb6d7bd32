"""Process-wide state follows the settings: one receiver resets it all."""

from __future__ import annotations

import os
import socket

import pytest
from django.conf import settings
from django.test import Client, override_settings

import replica_router
from replica_router import ReplicaRouter, runtime
from replica_router.conf import get_config
from replica_router.cutoff import registry
from testbed.testapp.models import Author
from tests.unit.test_monitor import FakeConnection

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


@pytest.mark.parametrize("health_checks", [True, False])
def test_reads_during_a_migrate_go_to_the_primary_with_the_monitor_running_or_off(
    health_checks,
):
    # A migrate run by a process whose routing is built already (call_command
    # in a running site, a test's set-up): a non-atomic migration's reads must
    # see its own writes.
    router = ReplicaRouter()
    config = {"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 60, "HEALTH_CHECKS": health_checks}
    with override_settings(REPLICA_ROUTER=config):
        routing = runtime.load()
        routing.awaiting_monitor = False  # as if started, or with no monitor at all
        routing.balancer.rotation = frozenset({"replica_1"})
        assert router.db_for_read(Author) == "replica_1"
        runtime._on_pre_migrate()
        try:
            assert router.db_for_read(Author) == "default"
        finally:
            runtime._on_post_migrate()
        if routing.monitor is not None:
            routing.monitor.stop()
            routing.awaiting_monitor = False
        assert router.db_for_read(Author) == "replica_1"


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


def test_reset_state_forgets_the_config_the_roles_and_the_routing():
    with override_settings(REPLICA_ROUTER={"REPLICAS": ["replica_1"], "CHECK_INTERVAL": 60}):
        routing = runtime.load()
        assert runtime.role_of("replica_2") is None
        # Changed behind Django's back: no setting_changed signal.
        settings.REPLICA_ROUTER = {"REPLICAS": ["replica_1", "replica_2"], "CHECK_INTERVAL": 30}
        assert get_config().check_interval == 60
        assert replica_router.reset_state is runtime.reset_state
        replica_router.reset_state()
        assert runtime.current is None
        assert routing.monitor is not None and not routing.monitor.running
        assert get_config().check_interval == 30
        assert runtime.role_of("replica_2") == runtime.REPLICA
        assert runtime.load().replicas == {"replica_1", "replica_2"}


def test_a_migrate_that_raised_does_not_keep_reads_on_the_primary():
    # migrate sends pre_migrate, and post_migrate only if every migration applied.
    runtime._on_pre_migrate()
    try:
        assert runtime.migrating
        # Settings may change while a migrate runs: that does not end it.
        with override_settings(REPLICA_ROUTER={"REPLICAS": ["replica_1"]}):
            assert runtime.migrating
        Client().get("/no-such-page/")  # a web request never runs inside migrate
        assert not runtime.migrating
        runtime._on_pre_migrate()
        runtime.reset_state()
        assert not runtime.migrating
    finally:
        runtime._on_post_migrate()


def test_a_forked_child_forgets_the_parents_connections():
    parent_end, server_end = socket.socketpair()
    connection = FakeConnection("replica_1", os.dup(parent_end.fileno()))
    registry.register("replica_1", connection)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports what it inherited, then leaves at once
            os.write(write, b"%d" % registry.count("replica_1"))
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"0"  # its sockets are the parent's: never cut there
        assert registry.count("replica_1") == 1
    finally:
        connection.close()
        parent_end.close()
        server_end.close()
