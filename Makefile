# The two commands of the README. Each creates .venv and installs fer_ray on first use.
#
# Python: fer_ray supports 3.11-3.13. Unless PYTHON is set (`make test PYTHON=python3.12`), .venv is
# made with the newest of python3.13, python3.12, python3.11 that runs here (a pyenv shim of a version
# pyenv has not selected is on PATH but does not run, so it is skipped). The install is the same on each;
# where pip finds torch for one Python on the local disk (.ci/run prefers 3.11 for that reason) another
# downloads about 1 GB of wheels once.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for v in 3.13 3.12 3.11; do python$$v -c 'import sys' >/dev/null 2>&1 && { echo python$$v; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-fast format install

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "no python3.13, python3.12 or python3.11 runs here: install one, or set PYTHON=/path/to/python3.1x" >&2; exit 1; }
	@echo "Python for $(VENV): $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

## the main job on the embedded default: synthetic KDEF-format faces, local Ray, MLflow in ./mlflow.db
quickstart: install
	$(PY) -m fer_ray.sweep sweeps/quickstart.yaml

# Two pytest-xdist workers: one runs the `slow` end-to-end tests one after another (they form one
# xdist group, tests/conftest.py: two sweeps never start Ray at once), the other the unit tests.
XDIST := -n 2 --dist loadgroup

## the test suite (real Ray, real MLflow, real torch; about 10 minutes on 2 cores)
test: install
	$(PY) -m pytest $(XDIST)

## the unit tests without Ray/MLflow end-to-end runs (marker `slow`), for iteration: about 1 minute on 2 cores
test-fast: install
	$(PY) -m pytest $(XDIST) -m "not slow" -q

## tidy the code as tests/test_lint.py checks it: ruff's lint fixes, then its formatter
format: install
	$(VENV)/bin/ruff check --fix fer_ray tests benchmarks
	$(VENV)/bin/ruff format fer_ray tests benchmarks
