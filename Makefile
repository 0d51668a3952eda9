# Two commands do all the set-up: `make run` starts the whole system, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck contracts pytest system-tools bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m deploy.local

lint: $(STAMP)
	$(BIN)/ruff check services shared deploy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict services shared

contracts: $(STAMP)
	$(BIN)/lint-imports

# Debian tools the deployment tests need (promtool, docker-compose); installed when missing (as root).
system-tools:
	@command -v promtool >/dev/null && command -v docker-compose >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus docker-compose; }

# The suite mostly waits (group joins, polling), so three workers share two cores well; one file per worker
# keeps module-scoped fixtures (a broker, a running system) together.
PYTEST_WORKERS ?= 3

pytest: $(STAMP) system-tools
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck contracts pytest

# The services as the container image runs them: the runtime dependencies only, without the test tools (pytest,
# schemathesis, ...) that libraries import when present (httpx loads rich and pygments: 6 MB of routing's RSS).
RUNTIME := .venv-runtime
RUNTIME_STAMP := $(RUNTIME)/.installed

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/python -m pip install --quiet --upgrade pip
	$(RUNTIME)/bin/python -m pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

# SPEC §9 measured on a real local system (about 5 minutes; not part of `make test`): prints a table and writes
# bench/results.json. HTTP load comes from Debian's wrk, installed when missing (as root).
bench: $(STAMP) $(RUNTIME_STAMP)
	@command -v wrk >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m bench --service-python $(RUNTIME)/bin/python

clean:
	rm -rf $(VENV) $(RUNTIME) .run .mypy_cache .ruff_cache .pytest_cache
