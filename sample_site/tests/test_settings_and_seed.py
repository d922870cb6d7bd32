"""The site's configuration from the local cluster, and the seed command.

A newcomer runs the site with no environment set: it must find the demo
cluster by itself, with the weights and pools the demo promises, and the seed
must fill it with thousands of rows in seconds and not twice.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command

from bookshop.models import Author, Book, Review
from bookshop_site import local_cluster
from helpers import db


@pytest.mark.parametrize("text", ["", "/work/main", "/tmp/x" * 60])
def test_the_default_directory_matches_the_makefiles_cksum(text):
    cksum = shutil.which("cksum")
    assert cksum, "coreutils cksum is needed to check against"
    out = subprocess.run([cksum], input=text.encode(), capture_output=True, check=True).stdout
    assert local_cluster.cksum(text.encode()) == int(out.split()[0])


def test_the_cluster_urls_carry_weights_and_pools(tmp_path):
    (tmp_path / "cluster.json").write_text(
        json.dumps({"ports": {"primary": 5001, "replica_1": 5002, "replica_2": 5003}})
    )
    urls = local_cluster.cluster_urls(tmp_path)
    assert urls["DATABASE_URL"] == (
        "postgres://postgres@127.0.0.1:5001/app?pool_min_size=2&pool_max_size=12&pool_timeout=5"
    )
    first, second = urls["REPLICA_URLS"].split(",")
    assert first.startswith("postgres://postgres@127.0.0.1:5002/app?weight=2&")
    assert second.startswith("postgres://postgres@127.0.0.1:5003/app?weight=1&")


def test_no_cluster_is_explained(tmp_path):
    with pytest.raises(local_cluster.NoLocalCluster, match="make serve"):
        local_cluster.cluster_urls(tmp_path)


def test_the_settings_built_from_the_cluster():
    assert settings.DATABASE_ROUTERS == ["replica_router.ReplicaRouter"]
    assert settings.MIDDLEWARE[0] == "replica_router.middleware.PrimaryPinningMiddleware"
    assert settings.REPLICA_ROUTER["REPLICAS"] == {"replica_1": 2, "replica_2": 1}
    for alias, config in settings.DATABASES.items():
        assert config["ENGINE"] == "replica_router.backends.postgresql", alias
        assert config["OPTIONS"]["pool"]["max_size"] == 12, alias
        assert config["CONN_HEALTH_CHECKS"] is True, alias


@db
def test_seed_fills_the_shop_once():
    out = io.StringIO()
    call_command("seed", authors=5, books=40, reviews=120, stdout=out)
    assert (Author.objects.using("default").count(), Book.objects.using("default").count()) == (
        5,
        40,
    )
    assert Review.objects.using("default").count() == 120
    assert User.objects.using("default").get(username="staff").is_staff
    text = out.getvalue()
    assert "reviews  [##############################]     120/120 100%" in text
    assert "Seeded 5 authors, 40 books and 120 reviews" in text

    again = io.StringIO()
    call_command("seed", stdout=again)
    assert "Already seeded (40 books)" in again.getvalue()
    assert Book.objects.using("default").count() == 40

    call_command("seed", authors=1, books=10, reviews=0, force=True, stdout=io.StringIO())
    books = Book.objects.using("default")
    assert books.count() == 50
    assert len(set(books.values_list("isbn", flat=True))) == 50
