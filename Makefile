# Every target sets up what it needs: uv (from PyPI if missing), .venv from uv.lock, and Debian's
# chromium for chart images when we are root and it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
PY := $(VENV)/bin/python
# Keep Prefect's database, results and logs inside the project (git-ignored), so `make run`
# artifacts show up in `prefect server start` started from here.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export UV_PYTHON_DOWNLOADS ?= never
# Arrow's default pool (mimalloc) keeps freed memory; jemalloc hands it back between steps,
# so a large run peaks lower (tasks/common/allocator.py).
export ARROW_DEFAULT_MEMORY_POOL ?= jemalloc

.PHONY: help setup uv venv browser run test test-fast lint fmt clean serve trigger stop bench

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

uv: ## Install uv from PyPI if it is missing
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
		|| $(PYTHON) -m pip install --quiet uv

# --compile-bytecode writes every installed module's .pyc once, here. Where PYTHONDONTWRITEBYTECODE
# is set (CI runners, containers, this project's machines) Python never writes them itself, and
# each run compiled Prefect and GX from source again: GX's import took about twice as long.
# --all-extras: the tests cover the Dask runner too (the `dask` extra, which users install only
# to scale out).
$(VENV)/.synced: uv.lock pyproject.toml | uv
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PYTHON)
	@touch $@

venv: $(VENV)/.synced ## Create .venv from uv.lock

browser: ## Make sure a headless Chromium exists for chart images (Debian's chromium)
	@if command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 \
		|| [ -x "$${BROWSER_PATH:-/nonexistent}" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for chart images"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "no Chromium found and cannot apt-get it: reports will publish without chart images"; \
	fi

setup: venv browser ## Everything run and test need

run: setup ## Run the pipeline end to end, offline, against the bundled local Faker API
	$(PY) -m flows.local_demo

serve: setup ## Local Prefect service: server, local API, pool, deployments, worker (idempotent)
	$(PY) -m flows.service serve

trigger: venv ## Run the 'daily' deployment on the local service and wait for it (ARGS="--param records=2000")
	$(PY) -m flows.service trigger $(ARGS)

stop: ## Stop what `make serve` started, by its recorded process ids
	@if [ -x $(PY) ]; then $(PY) -m flows.service stop; else echo "nothing to stop (no .venv)"; fi

# pytest-xdist workers (this machine has 2 cores). Tests that share state beyond a worker's own
# session stay on one worker (--dist loadgroup; the groups are in tests/conftest.py).
TEST_WORKERS ?= 2
test: setup ## Run the test suite on TEST_WORKERS=2 workers (PYTEST_ARGS="-k ..." to narrow)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The tests not marked slow (the marks and the slow folders are in tests/conftest.py).
test-fast: setup ## Unit and component tests for the inner loop: no e2e, browser, drills, bench
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

bench: setup ## Benchmark 1k, 30k, 100k and 1M records and the waits users feel (bench/results.md)
	$(PY) -m bench.run

lint: venv ## ruff (lint and format check), mypy (strict on flows/ and tasks/), deptry (imports declared)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/deptry .
	$(VENV)/bin/deptry tests --exclude __pycache__ --ignore DEP002,DEP004

fmt: venv ## Format and fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: stop ## Remove outputs of local runs (lake, database, Data Docs, Prefect home), keep the folders
	find data_lake db -mindepth 1 ! -name .gitkeep -delete
	rm -rf .prefect gx
