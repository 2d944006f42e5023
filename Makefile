# The two commands a new user runs (see README.md):
#   make main   set up the environment and run the whole default pipeline
#   make test   set up the environment and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/site_cache
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup main test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# DVC runs each stage's `python -m flows.<stage>` with the virtualenv first on PATH.
main: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/field.py
	$(BIN)/python benchmarks/train.py
