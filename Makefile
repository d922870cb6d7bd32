# Thin targets; the logic lives in pyproject.toml, noxfile.py and the cluster
# tool, replica_router/testing/cluster.py (its command line: cluster_cli.py).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The servers run as the postgres account when we are root, so the cluster
# lives where that account can reach it, one directory per checkout.
CLUSTER_DIR ?= /tmp/replica-router-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
CLUSTER := $(BIN)/python -m replica_router.testing.cluster
REPLICAS ?= 2

# The demo (sample_site/) has a cluster and a server of its own, apart from the
# test cluster; DEMO_KEEP=0 removes them at the end of `make demo`.
DEMO_DIR ?= /tmp/demo-cluster-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
DEMO_KEEP ?= 1
DEMO := $(BIN)/python sample_site/demo.py --dir $(DEMO_DIR)
SAMPLE_TEST_DIR ?= $(DEMO_DIR)-tests

.PHONY: install test test-unit lint format test-matrix cluster-up cluster-down cluster-status docs dist bench clean
.PHONY: test-django-suite
.PHONY: demo demo-down serve seed test-sample

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[env]' --group dev --group docs --group bench --group demo --group release
	touch $@

# The system packages a target needs, checked before anything else:
# `needs-postgresql+chromium` checks both, installs what is missing with apt-get
# as root or through passwordless sudo, and otherwise stops with one line that
# names the command to run. See tools/require-packages.
needs-%:
	@tools/require-packages "make $(MAKECMDGOALS)" $(subst +, ,$*)

# The library's suite against a real cluster (brought up with a PgBouncer in
# front of each node, or reused from `make cluster-up`, and removed if created
# here); then the tests marked `pgbouncer` again, through the PgBouncers
# (testbed/settings.py); then the branch coverage of replica_router/ over both
# (failing under the floor in pyproject.toml), then the sample site's suite.
# Then Django's own suite without and with the router (test-django-suite).
# The Patroni pass (tests/patroni) runs on a Patroni cluster of its own
# (replica_router.testing.patroni), with testbed/settings_patroni.py.
# Stops at the first of these that fails.
PGBOUNCER_PASS := REPLICA_ROUTER_TEST_PGBOUNCER=1 $(BIN)/coverage run -m pytest -m pgbouncer tests/integration
PATRONI_DIR ?= $(CLUSTER_DIR)-patroni
PATRONI := $(BIN)/python -m replica_router.testing.patroni run --dir $(PATRONI_DIR) --
# Under coverage, so that the cluster tool it exercises counts (its children too).
PATRONI_COVERED := $(BIN)/coverage run -m replica_router.testing.patroni run --dir $(PATRONI_DIR) --
PATRONI_PASS := $(BIN)/coverage run -m pytest --ds testbed.settings_patroni tests/patroni
test: needs-postgresql+chromium+redis+pgbouncer+dnsmasq+patroni install
	$(BIN)/coverage erase
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) --pgbouncer -- sh -c '\
		$(BIN)/coverage run -m pytest $(PYTEST_ARGS) && \
		echo "again through PgBouncer (transaction pooling), the tests marked pgbouncer:" && \
		$(PGBOUNCER_PASS) $(PYTEST_ARGS)'
	@echo "against a Patroni cluster, switching over and failing over (tests/patroni):"
	$(PATRONI_COVERED) $(PATRONI_PASS) $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
	$(MAKE) test-sample
	$(MAKE) test-django-suite

# Django's own test suite (the apps listed in tests/django_suite/__init__.py,
# from the sdist of the installed Django, cached in .cache/) twice, on a cluster
# of its own: with Django's PostgreSQL backend and no router, then with the
# router installed as the README says. Fails on a test that passes only without
# the router, or on an unclean teardown with it; ends with
# `django-suite: N passed, M failed, K skipped`. See tests/django_suite/run.py;
# DJANGO_SUITE_ARGS goes to it (test labels, --parallel N).
DJANGO_SUITE_DIR ?= $(CLUSTER_DIR)-django
test-django-suite: needs-postgresql install
	$(BIN)/python -m pip install --quiet -r tests/django_suite/requirements.txt
	$(CLUSTER) run --dir $(DJANGO_SUITE_DIR) --replicas $(REPLICAS) -- \
		$(BIN)/python -m tests.django_suite.run $(DJANGO_SUITE_ARGS)

# Only the tests that need no PostgreSQL (tests/unit): no server binaries, no
# cluster, a few seconds. Without REPLICA_ROUTER_CLUSTER_DIR the test settings
# point every alias at a port where nothing listens.
test-unit: install
	env -u REPLICA_ROUTER_CLUSTER_DIR $(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Python 3.11 + Django 5.2, 3.12 + Django 6.1, 3.13 + Django 6.0, one cluster for
# all; each session runs the PgBouncer pass too, and Django's own suite of the
# session's Django version without and with the router (noxfile.py).
test-matrix: needs-postgresql+redis+pgbouncer+dnsmasq install
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) --pgbouncer -- $(BIN)/nox $(NOX_ARGS)

cluster-up: needs-postgresql install
	$(CLUSTER) up --dir $(CLUSTER_DIR) --replicas $(REPLICAS)
	@$(CLUSTER) env --dir $(CLUSTER_DIR)

cluster-down: install
	$(CLUSTER) down --dir $(CLUSTER_DIR)

cluster-status: install
	$(CLUSTER) status --dir $(CLUSTER_DIR)

docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# The sdist and the wheel in dist/, checked by twine; the wheel must hold the
# package only (tools/check-wheel).
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tools/check-wheel dist/*.whl

# Benchmarks print their figures; each compares side by side in one process.
bench: needs-postgresql+wrk+redis+pgpool2+dnsmasq+patroni install
	mkdir -p docs/bench
	$(PATRONI) $(BIN)/python bench/bench_switchover.py | tee docs/bench/topology.txt
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) -- sh -c '\
		$(BIN)/python bench/bench_router.py | tee docs/bench/router.txt && \
		$(BIN)/python bench/bench_hooks.py | tee docs/bench/hooks.txt && \
		$(BIN)/python bench/bench_orm.py | tee docs/bench/orm.txt && \
		$(BIN)/python bench/bench_read_your_writes.py | tee docs/bench/read_your_writes.txt && \
		$(BIN)/python bench/bench_monotonic.py | tee docs/bench/monotonic.txt && \
		$(BIN)/python bench/bench_celery.py | tee docs/bench/celery.txt && \
		$(BIN)/python bench/bench_fleet.py | tee docs/bench/fleet.txt && \
		$(BIN)/python bench/bench_topology.py | tee -a docs/bench/topology.txt && \
		$(BIN)/python bench/bench_http.py && \
		$(BIN)/python bench/bench_pgpool.py | tee docs/bench/pgpool.txt'
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) -- env PYTEST_ADDOPTS="-s -k chaos" \
		$(BIN)/pytest tests/integration/test_chaos.py | grep '^chaos' | tee docs/bench/chaos.txt

# Cluster, migrate, seed, gunicorn on 127.0.0.1, then a narrated tour; the site
# keeps running until `make demo-down` (or DEMO_KEEP=0).
demo: needs-postgresql install
	DEMO_KEEP=$(DEMO_KEEP) $(DEMO) up

demo-down: install
	$(DEMO) down

# The site under runserver (DEBUG on) against the demo cluster, in the foreground.
serve: needs-postgresql install
	$(DEMO) serve

seed: needs-postgresql install
	$(DEMO) seed $(SEED_ARGS)

# The sample site's tests (views, the /replicas/ page in headless Chromium, the
# tour), on a cluster of their own. DATABASE_URL and REPLICA_URLS are unset so
# that the site builds them from the cluster, with the demo's weights and pools.
test-sample: needs-postgresql+chromium install
	$(CLUSTER) run --dir $(SAMPLE_TEST_DIR) --replicas 2 -- \
		env -u DATABASE_URL -u REPLICA_URLS $(BIN)/pytest -c sample_site/pytest.ini sample_site/tests $(PYTEST_ARGS)

clean: cluster-down
	rm -rf $(VENV) .nox docs/_build dist .coverage .coverage.*
