"""Per-app objects the routers need, kept on ``app.state`` and fetched from the request."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from fastapi import Request

from .lifecycle import Lifecycle
from .metrics import ServiceMetrics
from .registry import ModelRegistry
from .settings import Settings


@dataclass
class ServiceContext:
    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry
    lifecycle: Lifecycle
    encode_pool: Executor


def context(request: Request) -> ServiceContext:
    return request.app.state.context
