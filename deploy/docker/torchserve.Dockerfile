# syntax=docker/dockerfile:1
# TorchServe serving the generator's .mar (the `torchserve` compose profile). The archive's handler
# runs the exported ONNX graph with onnxruntime and reads its manifest with pydantic, so both are
# baked in here: nothing is installed at start-up.
# Build from the repository root: docker build -f deploy/docker/torchserve.Dockerfile .
# For KServe (deploy/kserve/), build the same layer on KServe's TorchServe image:
#   docker build -f deploy/docker/torchserve.Dockerfile \
#       --build-arg TORCHSERVE_IMAGE=pytorch/torchserve-kfs:0.12.0 -t gan-serve-torchserve-kfs .
ARG TORCHSERVE_IMAGE=pytorch/torchserve:0.12.0-cpu
FROM ${TORCHSERVE_IMAGE}
USER 0
RUN python -m pip install --no-cache-dir \
    "onnxruntime==1.20.1" "numpy>=1.26,<2.3" "pillow>=10,<12" "pydantic>=2.6,<3"
COPY deploy/torchserve/config.properties /home/model-server/config.properties
# The base image's unprivileged account, which owns /home/model-server.
# hadolint ignore=DL3066
USER model-server
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2)"]
CMD ["torchserve", "--start", "--foreground", "--ts-config", "/home/model-server/config.properties", "--model-store", "/home/model-server/model-store", "--models", "mnist-cdcgan=mnist-cdcgan.mar", "--disable-token-auth", "--ncs"]
