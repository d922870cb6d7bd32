"""The live /replicas/ page, in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``), driven by selenium; the site is served by Django's live
server on 127.0.0.1. What it guards against: a page that shows a stale state
(or needs a reload) while a replica is out of rotation, which is the one moment
an operator looks at it.
"""

from __future__ import annotations

import urllib.request

import pytest
from django.test import override_settings
from selenium import webdriver
from selenium.webdriver.common.by import By

from bookshop.factories import BookFactory
from helpers import db, router_settings, waiter
from replica_router.testing.cluster import Cluster

# The bookshop's reads go to its replicas in these tests, as on the site.
pytestmark = pytest.mark.replica_routing

# Quick probes and a low lag threshold, so states change within a second or two.
FAST = {"CHECK_INTERVAL": 0.25, "MAX_LAG_SECONDS": 1.0, "RECOVERY_CHECKS": 1}


def row(driver: webdriver.Chrome, alias: str):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-alias="{alias}"]')


def cell(driver: webdriver.Chrome, alias: str, field: str) -> str:
    return row(driver, alias).find_element(By.CSS_SELECTOR, f'td[data-field="{field}"]').text


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
