# One entry point for newcomers and CI. Everything installs into .venv from the
# hash-pinned locks, so a fresh machine gets exactly what CI tested: requirements.lock holds
# the runtime (what the production image installs), requirements-dev.lock adds the tools
# for tests, lint and `make run`, pinned to the same runtime versions.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-rabbitmq test-fast lint format lock migrate seed bench clean

$(STAMP): requirements.lock requirements-dev.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# --no-deps: the lock is already the whole closure; without it pip 23 re-resolves extras
	# such as pytest-cov's coverage[toml] and refuses them as unpinned.
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

## make run: install, migrate, seed the demo data and API client, print the curl lines (token, order),
## then start web (8000), worker, beat and Flower (5555) from the Procfile.
run: seed
	rm -rf .prometheus  # metrics of an earlier run
	$(BIN)/honcho start -f Procfile

## make test: install and run the whole suite on Redis, slow end-to-end tests included, then
## the broker-dependent tests (marker `brokers`: the workflow, delivery, chaos tests) again on
## RabbitMQ, measuring coverage over both (printed; the floor is fail_under in pyproject.toml).
test: install
	$(BIN)/python -m pytest --cov --cov-report= $(PYTEST_ARGS)
	BROKER_UNDER_TEST=rabbitmq $(BIN)/python -m pytest -m brokers --cov --cov-append \
	  --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

## make test-rabbitmq: only the second half of `make test`.
test-rabbitmq: install
	BROKER_UNDER_TEST=rabbitmq $(BIN)/python -m pytest -m brokers $(PYTEST_ARGS)

## make test-fast: skip the tests that start real processes.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## make lint: ruff (lint and format check) and mypy; CI runs it before the tests.
LINT_PATHS := config orders integrations tests manage.py
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

## make format: apply ruff's fixes and formatting.
format: install
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

## make bench: the pipeline beside the engine's ceiling, the API's latency, the cost of one
## order (tests/bench.py says what each run does); BENCH_ARGS="--help" lists the options.
bench: install
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

## make lock: re-resolve both locks from pyproject.toml (needs network); the dev lock is
## constrained by the runtime one, so tests run exactly the versions production gets.
lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --universal --generate-hashes -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --universal --generate-hashes \
	  -c requirements.lock -o requirements-dev.lock

clean:
	rm -rf $(VENV) db.sqlite3 celerybeat-schedule*
