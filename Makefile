# Praxis: every target bootstraps its own environment (python3 >= 3.11, git and make are enough).
PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell $(PYTHON) -c "import sys; print(sys.executable)")
RUN    := $(UV) run --frozen --all-packages
N      ?= 200
ARGS   ?=
CHAOS_RUNS ?= 100
IN_FLIGHT  ?= 8
SEED       ?= 1
IMAGE      ?= praxis:dev
DOCKER     ?= docker

.PHONY: help install run demo test test-unit lint format bench chaos proof image clean

help:
	@echo "make run    - the whole system on embedded NATS + PostgreSQL (Ctrl-C stops it)"
	@echo "make demo   - run, submit the example transfer, check the liquid moved, stop"
	@echo "make test   - the test suite against real servers"
	@echo "make test-unit - the tests that need no server and start no process (under a minute)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - latency/throughput benchmark (N=$(N) runs)"
	@echo "make proof  - the production shape: 3-node NATS cluster, two workcells, a node killed, every service restarted"
	@echo "make chaos  - kill every part in turn under load, check runs and leases (CHAOS_RUNS=$(CHAOS_RUNS))"
	@echo "make image  - the one image of every service: $(DOCKER) build -t $(IMAGE) . (needs a container engine)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.synced

run: install
	$(RUN) python -m praxis_devstack run $(ARGS)

demo: install
	$(RUN) python -m praxis_devstack demo $(ARGS)

test: install
	$(RUN) python -m praxis_devstack.browser
	$(RUN) pytest $(ARGS)

test-unit: install
	$(RUN) pytest -m "not integration and not e2e and not process" $(ARGS)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/*/src services/*/src

format: install
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: install
	$(RUN) python -m praxis_devstack bench --runs $(N) $(ARGS)

proof: install
	$(RUN) python -m praxis_devstack proof $(ARGS)

chaos: install
	$(RUN) python -m praxis_devstack chaos --runs $(CHAOS_RUNS) --in-flight $(IN_FLIGHT) --seed $(SEED) --resolve-during $(ARGS)

# The image needs a container engine; say so plainly when none answers (the Dockerfile's
# runtime set is tested without one: tests/deploy/test_image.py).
image:
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "make image: no container engine reachable ('$(DOCKER) info' failed)." >&2; \
	  echo "Start Docker (or set DOCKER=podman), or build elsewhere: docker build -t $(IMAGE) ." >&2; \
	  exit 1; }
	$(DOCKER) build --build-arg UV_VERSION=$(UV_VERSION) -t $(IMAGE) .

clean:
	rm -rf .venv $(TOOLS) .praxis
