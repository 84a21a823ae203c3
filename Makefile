# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# pytest workers: the cores this process may run on (a CPU quota is not seen: set TEST_WORKERS=n then).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)))')
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: run test test-fast venv flow clean wheelhouse device-dry-run

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
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The edit-test loop: everything but the tests that run whole DAGs, servers or several ranks (marked slow).
test-fast: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# The wheels the GPU machine lacks, for Python 3.12 there (no package index there): see scripts/device_check.sh.
WHEEL_TAGS := --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any
wheelhouse: $(STAMP) scripts/device-requirements.txt scripts/device-fallbacks.txt
	rm -rf wheelhouse && mkdir wheelhouse
	DS_BUILD_OPS=0 $(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w wheelhouse \
		$$(grep -E '^deepspeed==' scripts/device-requirements.txt)
	grep -vE '^(deepspeed==|#)' scripts/device-requirements.txt > wheelhouse/binary.txt
	$(BIN)/pip download --quiet --no-deps $(WHEEL_TAGS) -d wheelhouse -r wheelhouse/binary.txt \
		-r scripts/device-fallbacks.txt
	rm wheelhouse/binary.txt
	# Real captions' token counts for the GPU benchmark, where ../shared has them (benchmarks may read it).
	if [ -d ../shared/data/text/roco_captions ]; then $(BIN)/python benchmarks/padding.py \
		--lengths-out wheelhouse/caption_lengths.json > /dev/null; fi
	du -sh wheelhouse

# The device script on this CPU, tiny sizes: proves it (and the wheelhouse, against a real 3.12) before GPU time.
device-dry-run: wheelhouse
	PATH="$(BIN):$$PATH" bash scripts/device_check.sh --dry-run

clean:
	rm -rf data models metrics plots mlflow.db mlartifacts .prefect
