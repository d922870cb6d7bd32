"""The live /replicas/ page, in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``), driven by selenium; the site is served by Django's live
server on 127.0.0.1. What it guards against: a page that shows a stale state
(or needs a reload) while a replica is out of rotation, which is the one moment
an operator looks at it.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bookshop.factories import BookFactory
from helpers import db, router_settings
from replica_router.testing.cluster import Cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Quick probes and a low lag threshold, so states change within a second or two.
FAST = {"CHECK_INTERVAL": 0.25, "MAX_LAG_SECONDS": 1.0, "RECOVERY_CHECKS": 1}


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(
                f"{binary} is missing: apt-get install chromium chromium-driver "
                "(make test-sample does, as root or with passwordless sudo)"
            )
    profile = tempfile.mkdtemp(prefix="bookshop-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def row(driver: webdriver.Chrome, alias: str):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-alias="{alias}"]')


def cell(driver: webdriver.Chrome, alias: str, field: str) -> str:
    return row(driver, alias).find_element(By.CSS_SELECTOR, f'td[data-field="{field}"]').text


def waiter(driver: webdriver.Chrome) -> WebDriverWait:
    return WebDriverWait(
        driver,
        20,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


@db
def test_a_paused_replica_leaves_and_rejoins_rotation_on_the_page_without_a_reload(
    live_server, browser, replica_cluster: Cluster, pause_replica
):
    book = BookFactory()
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER=router_settings(**FAST)):
        browser.get(f"{live_server.url}/replicas/")
        wait = waiter(browser)
        wait.until(lambda d: row(d, "replica_2").get_attribute("data-state") == "healthy")
        assert cell(browser, "replica_2", "weight") == "1"
        assert cell(browser, "replica_1", "weight") == "2"
        # Anything the page reloads would lose this.
        browser.execute_script("window.sameDocument = 'yes';")

        # Reads served by the site show up in the counts as they happen.
        for _ in range(6):
            with urllib.request.urlopen(f"{live_server.url}/books/{book.pk}/") as reply:
                assert reply.status == 200
        wait.until(lambda d: int(cell(d, "replica_1", "reads_total").replace(",", "")) > 0)

        pause_replica("replica_2")
        BookFactory.create_batch(3)  # real writes: WAL the paused replica cannot apply
        wait.until(lambda d: row(d, "replica_2").get_attribute("data-state") == "lagging")
        assert cell(browser, "replica_2", "state") == "lagging"
        assert cell(browser, "replica_2", "in_rotation") == "no"
        assert "out" in row(browser, "replica_2").get_attribute("class")
        assert cell(browser, "replica_1", "state") == "healthy"
        assert browser.find_element(By.ID, "overall").text == "degraded"

        replica_cluster.resume("replica_2")
        wait.until(lambda d: row(d, "replica_2").get_attribute("data-state") == "healthy")
        assert cell(browser, "replica_2", "in_rotation") == "yes"
        assert browser.find_element(By.ID, "overall").text == "ok"
        assert browser.execute_script("return window.sameDocument;") == "yes"
