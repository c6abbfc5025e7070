# spikeguard. `make help` lists every target that carries a `## ` description.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install; reinstalls when pyproject.toml is newer.
INSTALLED := $(VENV)/.installed
# Debian packages the tests use; each is installed when missing.
DEBIAN_PACKAGES := dataset-fashion-mnist chromium chromium-driver
# tests/deploy: the gateway and monitoring configs under deploy/ run on these binaries.
DEBIAN_PACKAGES += nginx-light prometheus prometheus-nginx-exporter docker-compose
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

MODEL_DIR ?= models/fashion-mnist
# make soak: the model to serve (default: the tests' tiny model, built and cached on first use)
SOAK_MODEL_DIR ?=
FUZZ_REPORT := test-artifacts/fuzz.json
HOST ?= 127.0.0.1
PORT ?= 8000

# make serve-cpu-check: a second environment with the serve-cpu extra (ONNX Runtime's CPU wheel)
SERVE_CPU_VENV := .venv-serve-cpu

# The native MLF kernel for ONNX Runtime (mlf_kernel/src): one shared library, no link to
# libonnxruntime. -ffp-contract=off: no fused multiply-add, so the kernel's float32 arithmetic is
# the exported graph's operation for operation.
CXX ?= g++
KERNEL_LIB := mlf_kernel/libspikeguard_mlf.so
KERNEL_SOURCES := mlf_kernel/src/mlf.cc mlf_kernel/src/ort_abi.h
KERNEL_FLAGS := -std=c++17 -O3 -fPIC -shared -ffp-contract=off -fno-exceptions -fno-rtti \
	-fvisibility=hidden -Wall -Wextra -Werror -Wno-psabi -static-libstdc++ -static-libgcc

.PHONY: help install kernel system-packages test test-fast lint format serve bench bench-models deploy-check e2e soak fuzz study study-status serve-cpu-check device-payload

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(INSTALLED) kernel ## create .venv, install the project with its dev extra, build the kernel

kernel: $(KERNEL_LIB) ## build the native MLF kernel library (C++, Debian's g++)

$(KERNEL_LIB): $(KERNEL_SOURCES)
	@command -v $(CXX) >/dev/null || { echo "no C++ compiler: apt-get install g++"; exit 1; }
	$(CXX) $(KERNEL_FLAGS) -o $@ mlf_kernel/src/mlf.cc -lpthread

system-packages: ## install the Debian packages in DEBIAN_PACKAGES that are missing
	@if ! command -v dpkg-query >/dev/null; then \
		echo "not a Debian system: install $(DEBIAN_PACKAGES) yourself"; exit 0; \
	fi; \
	missing=""; \
	for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q 'ok installed' \
			|| missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: $(INSTALLED) kernel system-packages ## lint, check formatting, run the tests, then the service tests on the serve-cpu extra
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
	$(MAKE) serve-cpu-check

# The serve-cpu extra installs on its own (pip resolves it in an environment without the GPU
# wheel), and tests/service pass on it. The test tools (pytest, httpx, torch for the tiny
# test model) come from $(VENV): its site-packages is appended to the second environment's
# path by a .pth file, so every package the extra installs, onnxruntime above all, wins.
serve-cpu-check: $(INSTALLED) ## tests/service on the serve-cpu extra (onnxruntime, not onnxruntime-gpu)
	test -x $(SERVE_CPU_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_CPU_VENV)
	$(SERVE_CPU_VENV)/bin/python -m pip install -q '.[serve-cpu]'
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
		> "$$($(SERVE_CPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/spikeguard-dev-tools.pth"
	$(SERVE_CPU_VENV)/bin/python -c 'import onnxruntime, importlib.metadata as m; \
		assert m.version("onnxruntime") and "CUDAExecutionProvider" not in onnxruntime.get_available_providers(); \
		print("onnxruntime", onnxruntime.__version__, onnxruntime.__file__)'
	$(SERVE_CPU_VENV)/bin/python -m pytest tests/service

test-fast: $(INSTALLED) kernel ## lint, format check and the tests not marked slow or system (under two minutes)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not slow and not system"

lint: $(INSTALLED) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED) ## format the code and apply ruff's safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

serve: $(INSTALLED) kernel ## serve MODEL_DIR (models/fashion-mnist) on http://127.0.0.1:8000
	SPIKEGUARD_MODEL_DIR=$(MODEL_DIR) $(BIN)/python -m service --host $(HOST) --port $(PORT)

bench: $(INSTALLED) kernel system-packages ## today's graphs vs function vs native kernel, ceiling, service, training (bench/run.py -> docs/benchmarks.md)
	$(BIN)/python bench/run.py --model-dir $(MODEL_DIR)

bench-models: $(INSTALLED) ## CPU images/s of the classifier and purifier (bench/models.py)
	$(BIN)/python bench/models.py

# What a lent GPU machine lacks for bench/device_session.sh (its python3 is 3.12 with torch,
# onnx and numpy, no network): the wheels below, for that interpreter, and the dataset.
# pyautoattack's wheel is 44 MB of example weights around 0.2 MB of code: only its package's
# Python files travel (.device/site), to stay inside the device tool's 64 MiB.
DEVICE_WHEELS = pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5
device-payload: $(INSTALLED) system-packages ## wheels and Fashion-MNIST for bench/device_session.sh into .device/
	rm -rf .device && mkdir -p .device/wheels .device/site .device/fashion-mnist
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .device/wheels $(DEVICE_WHEELS)
	$(BIN)/python -m pip download -q --no-deps -d .device pyautoattack==0.2.0
	cd .device/site && unzip -q ../pyautoattack-0.2.0-py3-none-any.whl 'pyautoattack/*.py' \
		-x 'pyautoattack/examples/*'
	rm .device/pyautoattack-0.2.0-py3-none-any.whl
	cp /usr/share/datasets/fashion-mnist/*.gz .device/fashion-mnist/
	du -sh .device

deploy-check: $(INSTALLED) system-packages ## compose, hadolint, promtool and the gateway/Prometheus tests (tests/deploy)
	$(BIN)/pytest tests/deploy

e2e: $(INSTALLED) kernel system-packages ## the demo page in headless Chromium (tests/e2e; screenshots in test-artifacts/e2e)
	$(BIN)/pytest tests/e2e

soak: $(INSTALLED) kernel system-packages ## 64 clients for 60 s through the nginx gateway on 127.0.0.1 (bench/soak.py -> docs/soak.md)
	$(BIN)/python bench/soak.py $(if $(SOAK_MODEL_DIR),--model-dir $(SOAK_MODEL_DIR))

# make study: the study's remaining stages on one torch thread, each epoch and result committed
STUDY_PRESET ?= cpu-fashion-mnist
STUDY_FLAGS ?=
study: $(INSTALLED) system-packages ## continue the study in studies/$(STUDY_PRESET)/, committing as it goes
	OMP_NUM_THREADS=1 $(BIN)/python -m training reproduce --preset $(STUDY_PRESET) --commit \
		--no-progress $(STUDY_FLAGS)

study-status: $(INSTALLED) ## each study stage: done / partial / pending / cut, core-seconds used and left
	$(BIN)/python -m training reproduce --preset $(STUDY_PRESET) --status

fuzz: $(INSTALLED) system-packages ## schemathesis and Hypothesis with the `fuzz` profile's example counts (tests/reliability)
	mkdir -p $(dir $(FUZZ_REPORT))
	SPIKEGUARD_FUZZ_REPORT=$(FUZZ_REPORT) $(BIN)/pytest --hypothesis-profile=fuzz \
		tests/reliability/test_fuzz.py tests/reliability/test_imaging_properties.py
	@echo "requests the fuzzer sent, by status ($(FUZZ_REPORT)):"
	@cat $(FUZZ_REPORT)
