# Two entry points that do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on this machine's disk when no torch is present;
# the project's own range (pyproject.toml) is then already satisfied and pulls nothing more.
TORCH ?= torch==2.13.0

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

# the tests also check the TRL benchmark's correctness parts, so they install the bench extra too
$(VENV)/.dev: $(VENV)/.core pyproject.toml
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $@

.PHONY: demo test install dev bench
install: $(VENV)/.core
dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/rlft demo

# lint first: a ruff finding fails the target before any test runs (rules: [tool.ruff] in pyproject.toml)
test: $(VENV)/.dev
	$(BIN)/ruff check rlft tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/vs_trl.py --quick
