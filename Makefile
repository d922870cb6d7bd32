# Thin targets; the logic lives in pyproject.toml, noxfile.py and
# replica_router/testing/cluster.py.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The servers run as the postgres account when we are root, so the cluster
# lives where that account can reach it, one directory per checkout.
CLUSTER_DIR ?= /tmp/replica-router-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
CLUSTER := $(BIN)/python -m replica_router.testing.cluster
REPLICAS ?= 2

.PHONY: install test lint format test-matrix cluster-up cluster-down cluster-status docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[env]' --group dev --group docs --group bench
	touch $@

# Brings a cluster up (or reuses one from `make cluster-up`), runs pytest
# against it, and removes the cluster it created. Exit status is pytest's.
test: install
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) -- $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Python 3.11 + Django 5.2, 3.12 + Django 6.1, 3.13 + Django 6.0, one cluster for all.
test-matrix: install
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) -- $(BIN)/nox $(NOX_ARGS)

cluster-up: install
	$(CLUSTER) up --dir $(CLUSTER_DIR) --replicas $(REPLICAS)
	@$(CLUSTER) env --dir $(CLUSTER_DIR)

cluster-down: install
	$(CLUSTER) down --dir $(CLUSTER_DIR)

cluster-status: install
	$(CLUSTER) status --dir $(CLUSTER_DIR)

docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# Benchmarks print their figures; each compares side by side in one process.
bench: install
	$(CLUSTER) run --dir $(CLUSTER_DIR) --replicas $(REPLICAS) -- $(BIN)/python bench/bench_router.py

clean: cluster-down
	rm -rf $(VENV) .nox docs/_build
