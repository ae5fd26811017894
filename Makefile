# The two commands of the README. Each creates .venv and installs fer_ray on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-fast install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

## the main job on the embedded default: synthetic KDEF-format faces, local Ray, MLflow in ./mlflow.db
quickstart: install
	$(PY) -m fer_ray.sweep sweeps/quickstart.yaml

## the test suite (real Ray, real MLflow, real torch; about 10 minutes on 2 cores)
test: install
	$(PY) -m pytest

## the unit tests without Ray/MLflow end-to-end runs (marker `slow`), for iteration: under 2 minutes
test-fast: install
	$(PY) -m pytest -m "not slow" -q
