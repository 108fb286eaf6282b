# `make run` and `make test` each work as the first command on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the dependency list changes.
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Real data and meshes that the tests use, from Debian's archive.
DEB_PACKAGES := assimp-testmodels dataset-fashion-mnist wordnet-base

.PHONY: run test lint compile s3 bench images constraints sample-data clean system-packages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo: a local KFP run against a local S3 server, on the sample data.
run: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) lint system-packages
	$(BIN)/python -m pytest -q

system-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

lint: $(STAMP)
	$(BIN)/ruff check src components pipelines tests bench examples
	$(BIN)/ruff format --check src components pipelines tests bench examples

# Rewrites the compiled pipeline YAML in pipelines/.
compile: $(STAMP)
	$(BIN)/finetuner compile --output-dir pipelines

# A local S3 server in the foreground (Ctrl-C stops it).
s3: $(STAMP)
	$(BIN)/finetuner s3-server --data-dir .s3data

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

# Regenerates examples/wordnet_pairs.csv from Debian's WordNet.
sample-data: system-packages
	$(PYTHON) examples/make_wordnet_pairs.py --out examples/wordnet_pairs.csv

# The step images: `make images REGISTRY=registry.example.com/ml TAG=1.0`, then compile the
# pipelines against them with `finetuner compile --image ... --gpu-image ...` (README).
REGISTRY ?= ghcr.io/finetuner-kfp
TAG ?= 0.1.0
images:
	@tool=$$(command -v docker || command -v podman) || { echo "neither docker nor podman is installed"; exit 1; }; \
	$$tool build -f images/Dockerfile -t $(REGISTRY)/finetuner:$(TAG) . && \
	$$tool build -f images/Dockerfile.gpu -t $(REGISTRY)/finetuner-gpu:$(TAG) .

# Pins every package of the step images at the versions installed here.
constraints: $(STAMP)
	{ sed -n '1,2p' images/constraints.txt; $(BIN)/pip freeze --exclude-editable; } > images/constraints.tmp
	mv images/constraints.tmp images/constraints.txt

clean:
	rm -rf $(VENV) .s3data .local-pipeline-root runs
