"""django-debug-toolbar's "Replica routing" panel, in a real headless browser.

The site as ``DEBUG=1`` configures it (the toolbar with the router's panel) is
served by a live server of its own, and Chromium opens the panel as a
developer would. What it guards against: a panel that leaves queries
unexplained (no alias or no reason), that counts other queries than the SQL
panel, or that shows replica reads on the wrong node or for the wrong reason.

``UPDATE_SCREENSHOTS=1`` saves the screenshot of the panel that
docs/debug-toolbar.md shows (docs/images/debug-toolbar-panel.png).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, override_settings
from pytest_django.live_server_helper import LiveServer
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from bookshop.factories import BookFactory, ReviewFactory
from helpers import db, router_settings, waiter
from replica_router.testing.cluster import Cluster

pytest.importorskip("debug_toolbar", reason="the demo dependency group installs it")

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "debug-toolbar-panel.png"
REPLICAS = {"replica_1", "replica_2"}
_URLS = "bookshop_site_debug_urls"


def _fresh(module: str) -> ModuleType:
    """A new copy of a module of the site, executed under the current environment."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


@pytest.fixture
def debug_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The site's settings as DEBUG=1 makes them: the toolbar with the router's panel.

    Django's test runner turns DEBUG off, so the site's settings and URLs are
    read afresh with DEBUG on, and applied with override_settings.
    """
    monkeypatch.setenv("DEBUG", "1")
    site = _fresh("bookshop_site.settings")
    assert "debug_toolbar" in site.INSTALLED_APPS
    with override_settings(
        DEBUG=True,
        INSTALLED_APPS=site.INSTALLED_APPS,
        MIDDLEWARE=site.MIDDLEWARE,
        INTERNAL_IPS=site.INTERNAL_IPS,
        DEBUG_TOOLBAR_PANELS=site.DEBUG_TOOLBAR_PANELS,
    ):
        monkeypatch.setitem(sys.modules, _URLS, _fresh("bookshop_site.urls"))
        with override_settings(ROOT_URLCONF=_URLS):
            yield


@pytest.fixture
def toolbar_site(debug_settings: None) -> Iterator[str]:
    """The URL of the site with DEBUG on, on a live server of its own (pytest-django's
    ``live_server`` loaded its middleware once for the session, without the toolbar)."""
    server = LiveServer("127.0.0.1:0")
    try:
        yield server.url
    finally:
        server.stop()


@dataclass(frozen=True)
class Row:
    alias: str
    reason: str
    sql: str


def toolbar(driver: webdriver.Chrome):
    """Where the toolbar's elements are: its shadow root (toolbar 8), else the page."""
    host = driver.find_element(By.ID, "djDebugRoot")
    return driver.execute_script("return arguments[0].shadowRoot", host) or driver


def subtitle_count(driver: webdriver.Chrome, panel: str) -> int:
    text = toolbar(driver).find_element(By.CSS_SELECTOR, f"#djdt-{panel} small").text
    match = re.match(r"(\d+) quer", text)
    assert match, text
    return int(match.group(1))


def routing_rows(driver: webdriver.Chrome) -> list[Row]:
    """Open the Replica routing panel and read its query table."""
    root = toolbar(driver)
    root.find_element(By.CSS_SELECTOR, "a.ReplicaRoutingPanel").click()
    # The toolbar loads the panel's content when it is opened.
    waiter(driver).until(
        lambda d: root.find_elements(
            By.CSS_SELECTOR, "#ReplicaRoutingPanel #djdt-replica-routing-pin"
        )
    )
    rows = []
    for tr in root.find_elements(By.CSS_SELECTOR, "#djdt-replica-routing-queries tbody tr"):
        cells = {
            td.get_attribute("data-field"): td.text.strip()
            for td in tr.find_elements(By.CSS_SELECTOR, "td")
        }
        rows.append(Row(alias=cells["alias"], reason=cells["reason"].split()[0], sql=cells["sql"]))
    return rows


def assert_every_query_explained(driver: webdriver.Chrome, rows: list[Row]) -> None:
    assert rows
    unexplained = [row for row in rows if not row.alias or not row.reason]
    assert unexplained == []
    # The same queries as the toolbar's own SQL panel counts, and as the subtitle says.
    assert len(rows) == subtitle_count(driver, "SQLPanel")
    assert len(rows) == subtitle_count(driver, "ReplicaRoutingPanel")


def is_shop_read(row: Row) -> bool:
    return row.sql.startswith("SELECT") and '"bookshop_' in row.sql


@db
@pytest.mark.replica_routing
def test_the_panel_gives_every_query_its_alias_and_reason(
    toolbar_site, browser, replica_cluster: Cluster, pause_replica
):
    book = BookFactory()
    ReviewFactory.create_batch(3, book=book)
    replica_cluster.wait_replayed()
    browser.set_window_size(1400, 1000)
    # The replicas paused below must stay in rotation for the test's few seconds.
    with override_settings(REPLICA_ROUTER=router_settings(MAX_LAG_SECONDS=60)):
        # A page of reads, with no pin: each on a replica, for the schedule's reason.
        browser.get(f"{toolbar_site}/books/{book.pk}/")
        rows = routing_rows(browser)
        assert_every_query_explained(browser, rows)
        assert len([row for row in rows if is_shop_read(row)]) >= 3
        assert {row.reason for row in rows} == {"replica"}
        # Monotonic reads: one replica serves the whole request.
        assert len({row.alias for row in rows}) == 1
        assert {row.alias for row in rows} <= REPLICAS
        subtitle = toolbar(browser).find_element(By.CSS_SELECTOR, "#djdt-ReplicaRoutingPanel small")
        assert subtitle.text == f"{len(rows)} queries: {len(rows)} on replicas"

        # A review posted while no replica can replay it: the redirected page's
        # reads are pinned to the primary by the cookie, then kept there (monotonic).
        for replica in sorted(REPLICAS):
            pause_replica(replica)
        browser.get(f"{toolbar_site}/books/{book.pk}/")
        browser.find_element(By.ID, "id_reviewer").send_keys("Ada")
        Select(browser.find_element(By.ID, "id_rating")).select_by_value("5")
        browser.find_element(By.ID, "id_text").send_keys("Read it twice.")
        browser.find_element(By.CSS_SELECTOR, "form.stacked button[type=submit]").click()
        waiter(browser).until(
            lambda d: "Read it twice." in d.find_element(By.TAG_NAME, "main").text
        )

        rows = routing_rows(browser)
        assert_every_query_explained(browser, rows)
        shop = [row for row in rows if is_shop_read(row)]
        assert shop[0].reason == "pinned"
        assert {row.reason for row in shop} <= {"pinned", "monotonic"}
        assert {row.alias for row in shop} == {"default"}
        # Before that, the router asked the replicas whether they had the
        # write: queries whose connection it chose itself.
        checks = [row for row in rows if "pg_last_wal_replay_lsn" in row.sql]
        assert checks
        assert {row.alias for row in checks} <= REPLICAS
        assert {row.reason for row in checks} == {"direct"}
        pin = toolbar(browser).find_element(By.CSS_SELECTOR, "#djdt-replica-routing-pin").text
        assert "reads must see WAL position" in pin
        nodes = toolbar(browser).find_elements(
            By.CSS_SELECTOR, "#djdt-replica-routing-nodes tbody tr"
        )
        assert {node.get_attribute("data-alias") for node in nodes} == {"default", *REPLICAS}

        if os.environ.get("UPDATE_SCREENSHOTS"):
            browser.set_window_size(1400, 1250)  # the three tables, whole
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(SCREENSHOT))


def nav_subtitle(html: str, panel: str) -> str:
    match = re.search(rf'id="djdt-{panel}".*?<small>([^<]*)</small>', html, re.DOTALL)
    assert match, f"no subtitle for {panel}"
    return match.group(1).strip()


@db
@pytest.mark.replica_routing
def test_the_panel_traces_a_request_served_under_asgi_too(debug_settings, replica_cluster):
    """Under ASGI the view runs in a thread of its own; the trace follows it there."""
    book = BookFactory()
    replica_cluster.wait_replayed()
    response = async_to_sync(AsyncClient().get)(f"/books/{book.pk}/")
    html = response.content.decode()
    ours = nav_subtitle(html, "ReplicaRoutingPanel")
    count = int(ours.split()[0])
    assert count >= 3
    assert ours == f"{count} queries: {count} on replicas"
    assert nav_subtitle(html, "SQLPanel").startswith(f"{count} queries")
