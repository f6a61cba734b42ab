# Everyday commands. `make run` and `make test` set everything up on a fresh machine first.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of torch that lies on this project's machines; on a GPU host, use a CUDA build:
#   make setup TORCH='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH ?= torch==2.13.0
HOST  ?= 127.0.0.1
PORT  ?= 8000

.PHONY: setup dev run test test-slow lint typecheck unit e2e bench api-image api-image-check clean

# What running needs: the engine (with torch), no test toolchain and no NudeNet (AGPL, opt-in).
$(VENV)/.installed: pyproject.toml deploy/constraints.txt
	@echo "==> [1/4] creating the virtual environment $(VENV)"
	python3 -m venv $(VENV)
	@echo "==> [2/4] upgrading pip"
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@echo "==> [3/4] installing $(TORCH) (the largest step; see the README for which build it takes)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on $(TORCH)
	@echo "==> [4/4] installing darkroom and its engine (diffusers, transformers, ...)"
	$(PY) -m pip install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[engine]'
	touch $@

# What the tests need besides: pytest, ruff, mypy, Playwright, moto, NudeNet for its tests, ...
$(VENV)/.dev-installed: $(VENV)/.installed
	@echo "==> installing the test toolchain (the dev extra)"
	$(PY) -m pip install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[engine,dev]'
	touch $@

setup: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# The whole service on this machine: SQLite, local files, one worker child process.
# Default: the tiny offline engine (its images are noise). Real weights: make run ENGINE=krea2
ENGINE ?= tiny
run: setup
	DARKROOM_ENGINE=$(ENGINE) $(VENV)/bin/darkroom serve --host $(HOST) --port $(PORT)

lint: dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: dev
	$(VENV)/bin/mypy

# The everyday suite: everything but the tests marked slow (long end-to-end runs: every size
# at full pixels, crashes and races with several processes, the compose topology, the GPU
# benchmark's dry run). `make test-slow` runs those; CI runs both (.ci/run).
test: lint typecheck
	scripts/test-system-deps
	$(VENV)/bin/pytest -m "not slow"

test-slow: dev
	scripts/test-system-deps
	$(VENV)/bin/pytest -m slow

# The in-process tests only: no process is started (one that starts one fails, see tests/conftest.py).
unit: dev
	DARKROOM_TEST_UNIT=1 $(VENV)/bin/pytest -m "not slow and not process"

bench: dev
	$(PY) bench/service_overhead.py

# The API image built without a Docker engine (debootstrap + buildah, as root; deploy/README.md).
# TOKENIZER=DIR hands the build a model folder's tokenizer (unset: the Hub; tiny: the tiny model's).
api-image:
	TOKENIZER="$(TOKENIZER)" scripts/build-api-image
# ... then started with podman: /readyz, its healthcheck, uid 10001, an over-long prompt refused.
api-image-check: setup
	TOKENIZER="$(TOKENIZER)" scripts/build-api-image --check

clean:
	rm -rf $(VENV) darkroom-data .mypy_cache .ruff_cache .pytest_cache
