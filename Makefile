# Two commands: `make run` (set-up + the demo pipeline) and `make test` (set-up + `make lint` + the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | md5sum | cut -c1-10)

export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_HOME := $(abspath .crowdforge/prefect)

.PHONY: setup run run-federated data lint test repro ui prefect-ui schedule serve clean bench-aggregation bench-ingest bench-learning bench-runners bench-federated bench-market

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)  ## the pinned environment in .venv
	mkdir -p $(PREFECT_HOME)

data: setup  ## demo data (if data/raw holds none)
	crowdforge demo-data

run: data  ## the Prefect flow collaborative_training on the embedded defaults (versions data/raw with DVC first)
	crowdforge run

DEMO_SITES := [sites/site-a,sites/site-b,sites/site-c]

run-federated: data  ## `make run` plus a federated member trained at three demo sites (Flower SuperLink + SuperNodes on loopback)
	crowdforge demo-data --sites 3
	crowdforge run -S federated.enabled=true -S 'federated.sites=$(DEMO_SITES)'

lint: setup  ## ruff on src, pipelines, tests and bench (pyproject.toml [tool.ruff])
	ruff check src pipelines tests bench

test: lint  ## ruff, then the test suite (includes the whole flow and `dvc repro` on tiny data)
	pytest -q

repro: data  ## the same stages through DVC
	dvc repro

ui: setup  ## MLflow UI on http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

prefect-ui: setup  ## Prefect UI on http://127.0.0.1:4200 (runs of `make run` are in .crowdforge/prefect)
	prefect server start --host 127.0.0.1 --port 4200

bench-aggregation: setup  ## truth inference vs crowd-kit on the shared crowds and synthetic 1M/10M-label crowds; speed
	python bench/aggregation.py
	python bench/aggregation_speed.py

bench-ingest: setup  ## ingestion + validation throughput and peak memory on 1M rows
	python bench/ingest.py

bench-learning: setup  ## gold-trained vs naive vs crowdforge on SST-2, weather sentiment and entity matching; throughput
	python bench/learning.py
	python bench/entity_matching.py

schedule: setup  ## local Prefect server on loopback (UI http://127.0.0.1:4200) serving the nightly deployment
	crowdforge schedule --port 4200

serve: setup  ## MLflow model server for models:/crowdforge@champion on http://127.0.0.1:5001/invocations
	MLFLOW_TRACKING_URI=sqlite:///$(abspath mlflow.db) mlflow models serve -m models:/crowdforge@champion \
	  --env-manager local --host 127.0.0.1 --port 5001

bench-federated: setup  ## SST-2 over 5 sites with label skew: centralised vs alone vs FedAvg, SecAgg+, DP, a malicious site, LoRA
	python bench/federated.py

bench-market: setup  ## a market of 9 crowd-trained models: search, data-free and few-label reuse (BENCHMARKS.md)
	python bench/market.py

bench-runners: setup  ## ensemble members serially, in threads and on a local Dask cluster
	python bench/task_runners.py

clean:  ## remove generated data, models, reports and the local stores (keeps .venv)
	rm -rf data models reports sites mlflow.db mlartifacts .crowdforge .dvc-remote dvc.lock
