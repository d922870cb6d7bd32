"""Counting for Prometheus: each event counted once, however often it is scraped."""

from __future__ import annotations

import threading

from replica_router.metrics import _Family


def test_scraping_does_not_change_the_counts():
    family = _Family()
    count = family.counter("replica_1", "replica")
    for _ in range(3):
        count()
    assert family.values() == [(("replica_1", "replica"), 3)]
    assert family.values() == [(("replica_1", "replica"), 3)]
    count()
    assert family.values() == [(("replica_1", "replica"), 4)]


def test_counts_from_many_threads_and_scrapes_meanwhile_add_up():
    family = _Family()
    per_thread = 20_000
    threads = [
        threading.Thread(target=lambda: [family.counter("a")() for _ in range(per_thread)])
        for _ in range(4)
    ]
    scrapes = [0]

    def scrape() -> None:
        while any(t.is_alive() for t in threads):
            family.values()
            scrapes[0] += 1

    scraper = threading.Thread(target=scrape)
    for thread in threads:
        thread.start()
    scraper.start()
    for thread in [*threads, scraper]:
        thread.join()
    assert family.values() == [(("a",), 4 * per_thread)]
