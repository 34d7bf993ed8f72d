# The two commands a new user needs: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0
export TORCH_HOME := $(CURDIR)/.cache/torch

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/pose-jobs demo

# Two pytest-xdist workers, whole files each (module fixtures are built once), the slowest files
# first (tests/conftest.py orders them): much of the suite waits on Ray and process start-up, not
# on the CPU. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 tests

clean:
	rm -rf $(VENV) .cache demo-out
