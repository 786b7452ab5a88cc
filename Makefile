# seal: common tasks. `make install` once, then `make demo` or `make test`.
# GPU machines: make install TORCH="torch" (or a CUDA index URL pin) instead of the CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 installs the CPU build on machines like ours; a plain `torch` pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint clean
.PHONY: image-cpu image-gpu kind-e2e minikube-e2e

$(BIN)/seal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(BIN)/seal  ## create .venv and install seal with its test tools

demo: install  ## run the CPU demo loop and print the round table
	$(BIN)/seal run configs/demo-cpu.yaml --plot .seal/demo-cpu-rewards.png

test: install  ## the whole test suite (unit + integration on a tiny model + real S3 server)
	$(BIN)/pytest -q

test-fast: install  ## unit tests only
	$(BIN)/pytest -q -m "not slow"

lint: install  ## ruff
	$(BIN)/ruff check seal tests

IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

image-cpu:  ## CPU image (CPU torch, tiny-model path) for kind/minikube and CPU clusters: seal-cpu:<version>
	docker build -f docker/Dockerfile.cpu --target runtime -t seal-cpu:$(IMAGE_TAG) .

image-gpu:  ## GPU image (vLLM's CUDA image + seal): seal:<version>
	docker build -f docker/Dockerfile.gpu -t seal:$(IMAGE_TAG) .

kind-e2e:  ## kind cluster + Argo + SeaweedFS + the chart; 2 rounds on a tiny model (tests/e2e/run.sh)
	bash tests/e2e/run.sh kind

minikube-e2e:  ## the same end-to-end test on minikube
	bash tests/e2e/run.sh minikube

clean:
	rm -rf .seal .pytest_cache
