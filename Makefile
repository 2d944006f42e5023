# The two commands a new user runs (see README.md):
#   make main   set up the environment and run the whole default pipeline
#   make test   set up the environment and run the test suite
# and, to run a paper configuration instead of the default: make main PARAMS=configs/cifar10-ddpmpp.yaml
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/site_cache
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup params main test bench gpu-check clean stack-up stack-down stack-status stack-deploy stack-env

# The pipeline's dependencies; the test tools (the `dev` extra) only for `make test`.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# PARAMS: a params file to run instead of the current params.yaml (e.g. configs/cifar10-ddpmpp.yaml).
# It is validated, then copied over params.yaml, the one file dvc.yaml reads, so that DVC tracks the
# values the pipeline ran with as usual. params.yaml is in git: `git checkout params.yaml` restores it.
PARAMS ?= params.yaml

params: setup
	$(BIN)/python -m flows.cli $(PARAMS)
ifneq ($(abspath $(PARAMS)),$(abspath params.yaml))
	cp $(PARAMS) params.yaml
	@echo "params.yaml is now a copy of $(PARAMS) (git checkout params.yaml restores the default)"
endif

# DVC runs each stage's `python -m flows <stage>` (the front door: flows/__main__.py checks the stage's
# params and inputs before it imports torch, Prefect and MLflow) with the virtualenv first on PATH, all
# stages against one Prefect server (scripts/with_prefect_server.py; none is started when PREFECT_API_URL
# is set).
main: params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/with_prefect_server.py -- $(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/field.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/bad_input.py

# On a GPU machine: the tests marked gpu (each skips without CUDA), then CUDA throughput against the CPU
# and bf16 against float32 (benchmarks/gpu_throughput.py prints one line and exits 0 without CUDA).
gpu-check: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -m gpu -q -rs
	$(BIN)/python benchmarks/gpu_throughput.py

# The team stack (README "Team setup", scripts/stack.py): PostgreSQL, MLflow and Prefect servers, a
# Prefect process worker and a Dask cluster, bound to 127.0.0.1, data and logs under STACK_DIR.
# stack-up also registers the deployments of prefect.yaml; `eval "$(make -s stack-env)"` points a
# shell at the stack.
STACK_DIR ?= .stack
STACK := $(BIN)/python scripts/stack.py --dir $(STACK_DIR)

stack-up: setup
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

stack-deploy: setup
	$(STACK) deploy

stack-env:
	@$(STACK) env
