# The two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench install postgres chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## PostgreSQL's server programs (Debian's package), for the suite's PostgreSQL half; the tests
## start and stop their own throwaway cluster (tests/pg_server.py)
postgres:
	scripts/postgres.sh

## Chromium (Debian's package), the browser the dashboard's browser test drives; never a download
chromium:
	scripts/chromium.sh

## make demo: fluxhook + the embedded provider simulator, a handful of jobs, live progress
demo: $(STAMP)
	$(BIN)/python -m service.demo

## make test: lint, types, and the whole suite, end-to-end tests included (what CI runs)
test: $(STAMP) postgres chromium
	$(BIN)/ruff check service handlers storage tests bench scripts
	$(BIN)/mypy service handlers storage
	$(BIN)/pytest

## make test-fast: everything but the slower end-to-end tests
test-fast: $(STAMP) postgres
	$(BIN)/pytest -m "not e2e"

## make bench: every benchmark in one run (ingest with wrk against a bare and a naive durable
## receiver, callback-to-notification latency, also with web and worker as separate processes
## on a throwaway PostgreSQL, idle cost, cold start); the figures go to
## bench/results/latest.json (a benchmark, not a test)
bench: $(STAMP) postgres
	scripts/wrk.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
