# Two commands on a fresh machine with Python 3.11+:  make demo  and  make test.
# Each creates .venv on first use and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-evkit

.PHONY: demo test lint typecheck pytest node-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "evkit needs Python 3.11 or newer; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/evkit demo

test: $(STAMP) node-deps lint typecheck pytest

node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix tests/node --no-audit --no-fund --silent; \
	else echo "npm not found: the Node client test will be skipped (it fails under EVKIT_REQUIRE_SERVICES=1)"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) tests/node/node_modules artifacts .pytest_cache .mypy_cache .ruff_cache
