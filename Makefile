# Every target sets up what it needs: a fresh machine needs only python3 (and node/npm
# for the interop tests and the peer benchmarks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := tests/interop
PEERS := bench/peers
PYTEST_ARGS ?=

.PHONY: run test lint bench clean venv interop peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Node packages for the Yjs interop tests (skipped by the tests where node is absent).
$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(INTEROP) && npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: the Node interop tests will skip"; fi

interop: $(INTEROP)/node_modules/.package-lock.json

# The peer servers the benchmarks run side by side with crdt-sync (Hocuspocus, y-websocket's
# server, pouchdb-server) and the Hocuspocus client; the bench smoke tests skip without them.
$(PEERS)/node_modules/.package-lock.json: $(PEERS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(PEERS) && npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: the peer benchmarks will skip"; fi

peers: $(PEERS)/node_modules/.package-lock.json

run: $(STAMP)
	$(BIN)/crdt-sync serve --data-dir ./var

lint: $(STAMP)
	$(BIN)/ruff check crdt_sync protocol storage web tests bench
	$(BIN)/ruff format --check crdt_sync protocol storage web tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) interop peers lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark, crdt-sync and the peers in one run: JSON in bench/results, the tables in
# docs/benchmarks.md, the chart in docs/bench-latency.png (see bench/all.py).
bench: $(STAMP) interop peers
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
