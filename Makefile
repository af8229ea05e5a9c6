# One-command setup: an isolated venv in .venv with the pinned versions of constraints.txt (verified to install here).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bridgeflow-installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install browser test test-fast lint typecheck pipeline smoke clean-scratch

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"bridgeflow needs Python 3.11, found {sys.version}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for tests/test_report_browser.py: the Debian package, installed only when missing and root.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q --no-install-recommends chromium \
	    || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; \
	else echo "chromium is missing: install the Debian package 'chromium' (the report browser test needs it)"; fi

# What CI runs: style, types, then the whole test suite, one test file per worker process (pytest-xdist): most tests
# wait on subprocesses (DVC, Prefect, stage processes), so two workers finish in about 60% of the serial time.
PYTEST_WORKERS ?= 2
test: install browser lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# The inner loop: lint, types and every test not marked slow (no subprocess DVC/Prefect runs, kills, Dask, Chromium).
test-fast: install lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"

lint: install
	$(BIN)/ruff check pipeline_lib flows tasks tests benchmarks tools

typecheck: install
	$(BIN)/mypy

pipeline: install
	$(BIN)/dvc repro

smoke: install
	$(BIN)/bridgeflow run --profile smoke

clean-scratch:
	rm -rf .bridgeflow/work
