# Everyday commands. `make run` and `make test` set everything up on a fresh machine first.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of torch that lies on this project's machines; on a GPU host, use a CUDA build:
#   make setup TORCH='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH ?= torch==2.13.0
HOST  ?= 127.0.0.1
PORT  ?= 8000

.PHONY: setup run test lint typecheck unit e2e bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[engine,dev]'
	touch $@

setup: $(VENV)/.installed

# The whole service on this machine: SQLite, local files, one worker child process.
# Default: the tiny offline engine (its images are noise). Real weights: make run ENGINE=krea2
ENGINE ?= tiny
run: setup
	DARKROOM_ENGINE=$(ENGINE) $(VENV)/bin/darkroom serve --host $(HOST) --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	scripts/test-system-deps
	$(VENV)/bin/pytest

unit: setup
	$(VENV)/bin/pytest -m "not slow" --ignore=tests/e2e

bench: setup
	$(PY) bench/service_overhead.py

clean:
	rm -rf $(VENV) darkroom-data .mypy_cache .ruff_cache .pytest_cache
