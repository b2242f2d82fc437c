# The two commands of the README: `make demo` and `make test`. Each sets up .venv first when it is
# missing or stale: uv (pinned, hash-checked, from requirements-uv.txt) installs exactly what
# uv.lock says, the project and its dev extra, and again whenever pyproject.toml, uv.lock or the
# uv pin changes.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
# uv lives in a venv of its own: `uv sync` makes .venv hold exactly the lock's packages.
UV_VENV ?= .tools
UV      := $(UV_VENV)/bin/uv
PYTEST_ARGS ?=
# The OpenAPI linter: Redocly CLI, pinned in tools/openapi-lint/package-lock.json, installed with
# the machine's Node.js and npm into tools/openapi-lint/node_modules (git-ignored).
OPENAPI_LINT  := tools/openapi-lint
REDOCLY_STAMP := $(OPENAPI_LINT)/node_modules/.installed-stamp

.PHONY: demo test lint lint-openapi typecheck unit install lock bench clean help

help:
	@echo "make demo   - run the whole unblock procedure for rob@contoso.com against the sandbox tenant"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make lint-openapi - lint the OpenAPI description (Redocly, recommended rules; no warnings)"
	@echo "make bench  - benchmarks (figures, not pass/fail)"
	@echo "make lock   - re-resolve uv.lock after changing the dependencies in pyproject.toml"

$(UV): requirements-uv.txt
	$(PYTHON) -m venv --clear $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		--require-hashes --only-binary :all: --no-deps -r requirements-uv.txt
	@touch $(UV)

# --locked: install the lock as it is, and refuse (rather than re-resolve) when pyproject.toml
# asks for something uv.lock does not hold. Only the Python that runs make is used, never a download.
$(STAMP): pyproject.toml uv.lock $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --extra dev --python $(PYTHON) --no-python-downloads
	@touch $(STAMP)

install: $(STAMP)

# e.g. make lock LOCK_ARGS="--upgrade-package fastapi"
lock: $(UV)
	$(UV) lock --python $(PYTHON) --no-python-downloads $(LOCK_ARGS)

lint: install
	$(BIN)/ruff check service tests alembic bench
	$(BIN)/ruff format --check service tests alembic bench
	$(BIN)/lint-imports
	$(BIN)/deptry .
	$(BIN)/vulture service --min-confidence 80

# npm ci installs exactly the lock, and again whenever package.json or the lock changes; after
# that no network is needed. --engine-strict: a Node.js the pinned CLI does not support fails here.
$(REDOCLY_STAMP): $(OPENAPI_LINT)/package.json $(OPENAPI_LINT)/package-lock.json
	@npm ci --prefix $(OPENAPI_LINT) --engine-strict --no-audit --no-fund || { echo "lint-openapi: could not install the OpenAPI linter with 'npm ci --prefix $(OPENAPI_LINT)': it needs Node.js 20.19+ or 22.12+ with npm 10+ on PATH and the npm registry reachable (run that command to see why it failed)" >&2; exit 1; }
	@touch $(REDOCLY_STAMP)

# Lints what `unblock openapi` prints with Redocly's recommended rules; any error or warning fails.
lint-openapi: install $(REDOCLY_STAMP)
	@mkdir -p build
	$(BIN)/unblock openapi > build/openapi.json
	$(OPENAPI_LINT)/lint.sh build/openapi.json

typecheck: install
	$(BIN)/mypy

test: lint typecheck lint-openapi
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit -q

demo: install
	$(BIN)/python -m service.demo $(DEMO_ARGS)

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(UV_VENV) .mypy_cache .ruff_cache .pytest_cache unblock.db* \
		$(OPENAPI_LINT)/node_modules build/openapi.json
