# The two commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project with its dev extras first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit install bench clean help

help:
	@echo "make demo   - run the whole unblock procedure for rob@contoso.com against the sandbox tenant"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make bench  - benchmarks (figures, not pass/fail)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check service tests alembic bench
	$(BIN)/ruff format --check service tests alembic bench
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit -q

demo: install
	$(BIN)/python -m service.demo $(DEMO_ARGS)

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache unblock.db*
