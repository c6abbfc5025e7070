# spikeguard inference service: ONNX Runtime behind FastAPI/uvicorn, no torch.
#
#   GPU (default): docker build -t spikeguard:gpu .
#   CPU:           docker build -t spikeguard:cpu --build-arg BASE_IMAGE=ubuntu:24.04 \
#                      --build-arg EXTRA=serve-cpu .
#   Other model:   --build-arg MODEL=<name> bakes models/<name>/ instead of fashion-mnist.
#
# onnxruntime-gpu 1.31 is built for CUDA 13.0 and cuDNN 9, hence the CUDA 13.0 cuDNN runtime
# base. Both bases are Ubuntu 24.04, so the virtualenv built below (Python 3.12) runs on
# either unchanged; on the CPU base ONNX Runtime uses its CPU execution provider.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# `serve` (onnxruntime-gpu) or `serve-cpu` (onnxruntime, the CPU wheel: a much smaller image)
ARG EXTRA=serve

FROM ubuntu:24.04 AS build
ARG EXTRA
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's archive keeps only the newest build of a package, so exact apt pins would break
# rebuilds; the Python ABI is fixed by the 24.04 release (3.12) instead.
# g++ and make build the native MLF kernel (mlf_kernel/src: C++ against ONNX Runtime's C
# API, no link to libonnxruntime; static libstdc++, so the runtime stage needs no compiler).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ make \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the `serve` extra needs: the service, contract and kernel packages and the
# project metadata (the Makefile builds the kernel).
COPY pyproject.toml README.md Makefile ./
COPY contract/ contract/
COPY service/ service/
COPY mlf_kernel/ mlf_kernel/
RUN make kernel
# Every dependency is pinned in pyproject.toml's `serve` and `serve-cpu` extras; the built
# kernel library goes into the virtualenv with the mlf_kernel package (package data).
# hadolint ignore=DL3013
RUN pip install ".[${EXTRA}]" \
    && python -m compileall -q /opt/venv

FROM ${BASE_IMAGE} AS runtime
ARG MODEL=fashion-mnist
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 spikeguard \
    && useradd --system --uid 10001 --gid spikeguard --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin spikeguard
COPY --from=build /opt/venv /opt/venv
COPY models/${MODEL}/ /app/models/${MODEL}/
# The root filesystem is read-only in compose: no bytecode writes, scratch space in /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPIKEGUARD_HOST=0.0.0.0 \
    SPIKEGUARD_PORT=8000 \
    SPIKEGUARD_MODEL_DIR=/app/models/${MODEL} \
    SPIKEGUARD_SHUTDOWN_TIMEOUT_S=20
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# uvicorn drains in-flight requests on SIGTERM for up to SPIKEGUARD_SHUTDOWN_TIMEOUT_S;
# the orchestrator's grace period (compose: stop_grace_period) must exceed it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SPIKEGUARD_PORT', '8000'), timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself.
CMD ["python", "-m", "service"]
