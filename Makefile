# freshrank: `make demo` runs the whole loop locally, `make test` runs lint, types and every test,
# `make bench` runs every benchmark (about 45 minutes on 2 cores, 19 of them the 500 swaps) into bench-results/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: demo test bench lint unit e2e clean

$(BIN)/python:
	@echo "creating $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip >&2

# torch is pinned to 2.13.0 in pyproject.toml: on these machines pip takes the CPU build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing freshrank into $(VENV)" >&2
	@$(BIN)/pip install --quiet -e . >&2
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# From Debian, for the tests: chromium draws the live dashboard in a real headless browser,
# promtool checks the committed Prometheus configuration (deploy/prometheus/).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(VENV)/.installed-debian: | $(BIN)/python
	@if ! command -v chromium > /dev/null || ! command -v promtool > /dev/null; then \
		echo "installing chromium and prometheus (promtool) from Debian" >&2; \
		$(SUDO) apt-get update -q > /dev/null && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium prometheus > /dev/null; \
	fi
	@touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

# @: with --json, stdout carries only freshrank's JSON.
demo: $(VENV)/.installed
	@$(BIN)/freshrank up $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit -q

e2e: $(VENV)/.installed-test $(VENV)/.installed-debian
	$(BIN)/python -m pytest tests/e2e -q

test: lint $(VENV)/.installed-debian
	$(BIN)/python -m pytest -q -rs

bench: $(VENV)/.installed-bench
	@$(BIN)/freshrank bench all --out bench-results $(ARGS)

clean:
	rm -rf $(VENV) .freshrank bench-results .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis
