# Every target sets up what it needs: a fresh machine needs only python3 (and node/npm
# for the interop tests and the peer benchmarks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := tests/interop
PYTEST_ARGS ?=

.PHONY: run test lint bench clean venv interop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Node packages for the Yjs interop tests (skipped by the tests where node is absent).
$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(INTEROP) && npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: the Node interop tests will skip"; fi

interop: $(INTEROP)/node_modules/.package-lock.json

run: $(STAMP)
	$(BIN)/crdt-sync serve --data-dir ./var

lint: $(STAMP)
	$(BIN)/ruff check crdt_sync protocol storage web tests bench
	$(BIN)/ruff format --check crdt_sync protocol storage web tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) interop lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.http_sync

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
