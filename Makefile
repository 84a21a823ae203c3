# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: run test test-fast venv flow clean

venv: $(STAMP)

# Pinned install from nothing: requirements.txt (top level) + constraints.txt (the full resolved set).
$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-test.txt -c constraints.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/python scripts/warm_deepspeed.py
	touch $(STAMP)

# The main job on the embedded default: the whole DAG through DVC.
run: $(STAMP)
	PATH="$(BIN):$$PATH" dvc repro

# The same DAG as a Prefect flow (ephemeral local API, no server).
flow: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m flows.pipeline

test: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The edit-test loop: everything but the tests that run whole DAGs, servers or several ranks (marked slow).
test-fast: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf data models metrics plots mlflow.db mlartifacts .prefect
