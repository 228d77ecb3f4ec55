# `make demo` and `make test` each create .venv when it is missing, install what they need, and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The distribution was called market-data-store (a name taken on the public index by another
# project); a .venv made before the rename still has it (and src/ its egg-info), which would
# clash with ours.
UNINSTALL_OLD_NAME := $(PY) -m pip uninstall --quiet --yes market-data-store >/dev/null 2>&1; \
	rm -rf src/market_data_store.egg-info

$(STAMP_DEMO): pyproject.toml | $(PY)
	$(UNINSTALL_OLD_NAME)
	$(PY) -m pip install --quiet -e '.[feedback]'
	touch $@

$(STAMP_DEV): pyproject.toml | $(PY)
	$(UNINSTALL_OLD_NAME)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_DEMO)

demo: $(STAMP_DEMO)
	$(PY) examples/run_coordinator_feedback.py $(ARGS)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks
	$(VENV)/bin/mypy --strict src

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP_DEV)
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
