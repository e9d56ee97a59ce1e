"""Clients for gan-serve: HTTP (sync and async), in-process ONNX, a PyTorch dataset and
the ``gan-sample`` bulk sampler. The dataset needs torch and is imported on its own:
``from ganclient.dataset import GanDataset``."""

from ganclient.client import (
    AsyncGanClient,
    GanClient,
    GanServeError,
    GanServeUnavailable,
    ModelInfo,
)
from ganclient.local import LocalGenerator

__all__ = [
    "AsyncGanClient",
    "GanClient",
    "GanServeError",
    "GanServeUnavailable",
    "LocalGenerator",
    "ModelInfo",
]
