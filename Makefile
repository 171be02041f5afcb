# One entry point for newcomers and CI. Everything installs into .venv from the
# hash-pinned requirements.lock, so a fresh machine gets exactly what CI tested.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lock migrate seed bench clean

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

## make run: install, migrate, seed the demo data, print a token and a curl line,
## then start web (8000), worker, beat and Flower (5555) from the Procfile.
run: seed
	$(BIN)/honcho start -f Procfile

## make test: install and run the whole suite, slow end-to-end tests included.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-fast: skip the tests that start real processes.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

## make lock: re-resolve requirements.lock from pyproject.toml (needs network).
lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --universal --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) db.sqlite3 celerybeat-schedule*
