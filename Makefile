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

.PHONY: run test test-quick test-trainjob lint compile s3 bench images constraints sample-data clean \
	system-packages container-packages cluster-run

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo: a local KFP run against a local S3 server, on the sample data.
run: $(STAMP)
	$(BIN)/python examples/demo.py

# Everything, the step images and the pipelines run in them included; the images are built
# (or found up to date) first: about 4 minutes more on a fresh machine, seconds after that.
test: $(STAMP) lint system-packages images
	FINETUNER_IMAGE=$(IMAGE) FINETUNER_GPU_IMAGE=$(GPU_IMAGE) $(BIN)/python -m pytest -q

# The quick loop: no images, no containers.
test-quick: $(STAMP) lint system-packages
	$(BIN)/python -m pytest -q -m "not containers"

# The train step across nodes for real: TrainJobs of 2 nodes x 1 CPU process through the
# Kubeflow SDK's container backend (podman), in the GPU image (also part of `make test`).
test-trainjob: $(STAMP) images
	FINETUNER_GPU_IMAGE=$(GPU_IMAGE) $(BIN)/python -m pytest -q tests/test_trainjob_containers.py

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
# The defaults are the names the committed pipeline YAML uses. podman (or docker) builds them;
# images/containers.conf gives podman the runc runtime and ulimits this kind of VM allows.
REGISTRY ?= ghcr.io/finetuner-kfp
TAG ?= 0.1.0
IMAGE := $(REGISTRY)/finetuner:$(TAG)
GPU_IMAGE := $(REGISTRY)/finetuner-gpu:$(TAG)
export CONTAINERS_CONF := $(CURDIR)/images/containers.conf
CONTAINER_PACKAGES := podman buildah runc debootstrap curl

container-packages:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 && exit 0; \
	missing=$$(for p in $(CONTAINER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

images: container-packages
	images/build.sh $(IMAGE) $(GPU_IMAGE)

# The cluster's way on one machine: the images, then the demo's pipeline compiled against them
# and run with every step in its container (kfp.local's DockerRunner), against local S3.
cluster-run: $(STAMP) images
	$(BIN)/python examples/demo.py --image $(IMAGE) --gpu-image $(GPU_IMAGE)

# Pins every package of the step images at the versions installed here.
constraints: $(STAMP)
	{ sed -n '1,2p' images/constraints.txt; $(BIN)/pip freeze --exclude-editable; } > images/constraints.tmp
	mv images/constraints.tmp images/constraints.txt

clean:
	rm -rf $(VENV) .s3data .local-pipeline-root runs
