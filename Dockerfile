# syntax=docker/dockerfile:1
# The service image. Two targets:
#   docker build -t vae-serving:cpu .                  # CPU (default): python slim + onnxruntime
#   docker build -t vae-serving:gpu --target gpu .     # NVIDIA CUDA 12 + cuDNN 9 + onnxruntime-gpu
# Both run `python -m service` (the command README documents) as a non-root user, serve the
# bundled models from /models (mount another folder there to serve yours) and report health to
# Docker with /readyz.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# --- build: wheels for the service and its run-time dependencies (no torch, no compiler) ---------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve,tracing]"

# --- build-gpu: the onnxruntime-gpu wheel (hundreds of MB), in a stage of its own so that only the
# gpu target downloads it (BuildKit skips stages the target does not use).
FROM ${PYTHON_IMAGE} AS build-gpu
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels-gpu "onnxruntime-gpu>=1.20"

# --- cpu: the default target -----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8081 \
    VAE_MODEL_DIR=/models
RUN python -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vae
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "vae-serving[serve,tracing]"
COPY --chown=root:root models /models
USER 10001:10001
EXPOSE 8000 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]

# --- gpu: same service on CUDA ---------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8081 \
    VAE_MODEL_DIR=/models \
    VAE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
# Ubuntu 24.04's Python is 3.12, the same minor version as the CPU image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vae
# The CPU onnxruntime wheel is swapped for onnxruntime-gpu: both provide the same module.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build-gpu,source=/wheels-gpu,target=/wheels-gpu \
    pip install --no-cache-dir --no-index --find-links=/wheels "vae-serving[serve,tracing]" \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --no-index --find-links=/wheels --find-links=/wheels-gpu onnxruntime-gpu
COPY --chown=root:root models /models
USER 10001:10001
EXPOSE 8000 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]

# The last stage is what a plain `docker build .` produces: keep the CPU image the default.
FROM cpu AS default
