"""Helpers for the sample site's tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from django.conf import settings
from django.db import connections
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

from bookshop import readstats

ALIASES = ["default", "replica_1", "replica_2"]
#: Transactional, on every alias: only committed rows reach the replicas.
db = pytest.mark.django_db(databases=ALIASES, transaction=True)


@contextmanager
def counted() -> Iterator[dict[str, int]]:
    """Reads per alias during the block, from the site's own counters."""
    before = {alias: c["total"] for alias, c in readstats.counter.counts().items()}
    reads: dict[str, int] = {}
    yield reads
    for alias, c in readstats.counter.counts().items():
        reads[alias] = c["total"] - before.get(alias, 0)
    for alias in ALIASES:
        reads.setdefault(alias, 0)


@contextmanager
def recorded() -> Iterator[list[tuple[str, str]]]:
    """(alias, SQL) of every statement this thread runs during the block."""
    log: list[tuple[str, str]] = []

    def record(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        log.append((context["connection"].alias, sql))
        return result

    with ExitStack() as stack:
        for alias in ALIASES:
            stack.enter_context(connections[alias].execute_wrapper(record))
        yield log


def table_reads(log: list[tuple[str, str]], table_prefix: str = '"bookshop_') -> set[str]:
    """The aliases that served SELECTs of the bookshop's tables."""
    return {alias for alias, sql in log if sql.startswith("SELECT") and table_prefix in sql}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.05)


def router_settings(**changes: object) -> dict:
    return {**settings.REPLICA_ROUTER, **changes}


def waiter(driver: webdriver.Chrome) -> WebDriverWait:
    """A wait on the browser that polls often and rides out a page being redrawn."""
    return WebDriverWait(
        driver,
        20,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
