# FunnelSync: `make demo` runs the service with embedded defaults; `make test` runs the whole suite.
# Both create or refresh .venv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-sqlite lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FunnelSync needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/funnelsync demo

serve: install
	$(BIN)/funnelsync serve

# Tests run in parallel worker processes (pytest-xdist), as many as PYTEST_WORKERS. Most tests wait on
# real HTTP, subprocesses and real time more than they compute, so twice the cores pays off. Items
# are handed out two at a time, so a worker busy with a long test is not also holding a queue.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist load --maxschedchunk 2
# Bytecode caches on, whatever the shell says: the suite starts some sixty Python processes (the
# xdist workers, real CLI processes), and without __pycache__ each one compiles the service and
# pytest rewrites every test module again, seconds of CPU per process.
PYTEST_ENV := env -u PYTHONDONTWRITEBYTECODE

# Tests marked `timing` judge request pacing against a CRM's rate limit: beside the parallel
# workers (or what they leave running as they finish), on 2 busy cores, a process can stall longer
# than the limiter's jitter allowance and bunch its requests; so they run first, alone, on an idle
# machine, as a real deployment sends.
test: install
	$(PYTEST_ENV) $(BIN)/pytest -p no:xdist -m timing
	$(PYTEST_ENV) $(BIN)/pytest $(PYTEST_PARALLEL) -m "not timing"

# Fast local loop: SQLite only (CI always runs both databases).
test-sqlite: install
	$(PYTEST_ENV) FUNNELSYNC_TEST_BACKENDS=sqlite $(BIN)/pytest -p no:xdist -m timing
	$(PYTEST_ENV) FUNNELSYNC_TEST_BACKENDS=sqlite $(BIN)/pytest $(PYTEST_PARALLEL) -m "not timing"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
