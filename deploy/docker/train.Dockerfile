# syntax=docker/dockerfile:1
# Training image: the package with the `train` extra (torch, onnx, ...). torch's Linux wheels
# bundle their CUDA libraries, so this image trains on a GPU when one is handed in, CPU otherwise.
# Build from the repository root: docker build -f deploy/docker/train.Dockerfile -t gan-serve-train .
# Run:  docker run --rm -v "$PWD/model_store:/app/model_store" -v "$PWD/runs:/app/runs" \
#         gan-serve-train --help
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
# The project itself; its dependency versions are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[train]"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home gan
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
# Exports land in /app/model_store and run artefacts in /app/runs: mount both from the host.
VOLUME ["/app/model_store", "/app/runs"]
ENTRYPOINT ["gan-train"]
CMD ["--help"]
