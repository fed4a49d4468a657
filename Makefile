# Two commands do all set-up on a fresh machine:
#   make run   - create .venv from requirements.lock, then `dvc repro` the default pipeline and render its plots
#   make test  - create .venv the same way, then run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# No telemetry, no update checks: CI and users' runs stay offline apart from pip.
export DVC_NO_ANALYTICS := 1
export ORT_DISABLE_TELEMETRY := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv run test test-fast params check-params bench serve plots clean dvc

SERVING_ENV := .venv-serving

$(VENV)/.installed: requirements.lock requirements-serving.txt requirements-serving-env.lock requirements-ort-previous.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-serving.txt
	rm -rf .venv-ort-previous
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --target .venv-ort-previous -r requirements-ort-previous.txt
	$(PYTHON) -m venv $(SERVING_ENV)
	$(SERVING_ENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-serving-env.lock
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/python -m pipeline check
	$(BIN)/dvc repro
	$(BIN)/python -m pipeline plots

# dvc.yaml's plots as SVG/PNG/offline HTML in reports/plots (what reports/summary.md embeds)
plots: venv
	$(BIN)/python -m pipeline plots

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# Any DVC command with the project's environment first on PATH (stage commands call `python`), from any shell:
#   make dvc ARGS="repro"      make dvc ARGS="exp run -S calibration=entropy"
dvc: venv
	$(BIN)/dvc $(ARGS)

# Compose conf/ into params.yaml, e.g. make params OVERRIDES="'precision=[fp32,int8]' model=[resnet18]"
params: venv
	$(BIN)/python -m pipeline compose $(OVERRIDES)

check-params: venv
	$(BIN)/python -m pipeline check

# Serve the default INT8 build on a real Triton server in the foreground until Ctrl-C.
serve: run
	$(BIN)/python -m pipeline serve resnet18-cpu-int8

bench: run
	$(BIN)/python scripts/benchmarks.py --cold --minilm --serving --cpu-target
	$(BIN)/python scripts/image_loading.py

clean:
	rm -rf artifacts metrics plots reports dvc.lock
