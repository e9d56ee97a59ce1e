# syntax=docker/dockerfile:1
# Serving image: the core package only (FastAPI + onnxruntime-gpu, never torch) on a CUDA 12 +
# cuDNN 9 runtime, which is what onnxruntime-gpu's default CUDA 12 wheels link against. The same
# image runs on a GPU when the host hands one in (--gpus / device reservations) and on CPU otherwise.
# Build from the repository root: docker build -f deploy/docker/service.Dockerfile -t gan-serve .
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# ---- build: a virtual environment with the service and its wheels, copied whole into the runtime.
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
# Core dependencies only: the train/torchserve extras (and so torch) stay out of this image.
RUN pip install --no-cache-dir . \
    && ! pip show torch >/dev/null 2>&1

# ---- runtime: same base (the venv's interpreter links to its /usr/bin/python3), no build tools.
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --create-home gan
COPY --from=build /opt/venv /opt/venv
# The shipped generator(s); owned by root so the service user can read but never modify them.
COPY model_store /app/model_store
# Bound to every interface of the container, so the host and other containers can reach it;
# admin routes (reload, loading a version) still answer only loopback clients unless an admin
# token is given (GAN_SERVE_ADMIN_TOKEN, or GAN_SERVE_ADMIN_TOKEN_FILE for a mounted secret).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GAN_SERVE_HOST=0.0.0.0 \
    GAN_SERVE_PORT=8000 \
    GAN_SERVE_MODEL_STORE=/app/model_store \
    GAN_SERVE_DEVICE=auto
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Readiness, not liveness: the container only turns healthy once the model is loaded and warm,
# so `depends_on: condition: service_healthy` and load balancers wait for real capacity.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GAN_SERVE_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["gan-serve"]
