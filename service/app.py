"""The FastAPI application: ``create_app(settings)`` wires settings, registry, metrics, routers."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from .admission import make_admission
from .context import ServiceContext
from .errors import ServiceError, install_error_handlers
from .fastpath import LeanRoutes
from .lifecycle import Lifecycle, freeze_startup_objects
from .metrics import ServiceMetrics
from .middleware import ServiceMiddleware
from .pipeline import count_refusal
from .priority import BasePriorityExecutor
from .registry import ModelRegistry
from .settings import Settings

log = logging.getLogger("gan_serve")

ROUTERS_PACKAGE = f"{__package__}.routers"
CORE_ROUTERS = ("health", "models", "generate", "translate", "admin", "docs")
# Routers other parts of the project add; included when their module exists.
OPTIONAL_ROUTERS = ("kserve", "playground")


class ServiceApp(FastAPI):
    """FastAPI with the service's own layers outermost: every HTTP request meets the guard
    (metrics, drain, in-flight cap, body limit), then the lean generate path, before FastAPI's
    own middleware stack, which only the other routes then pay for."""

    service_layer: ServiceMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.service_layer is not None:
            await self.service_layer(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    engine_path: str | None = None,
    metrics_dir: str | None = None,
) -> FastAPI:
    """Build the app; models load in the background after startup (``/readyz`` says when).

    With ``engine_path`` the app is one front end of several: its models run in the engine
    process listening there, and its metrics are shared through ``metrics_dir``.
    """
    settings = settings or Settings()
    metrics = ServiceMetrics(metrics_dir)
    lifecycle = Lifecycle()
    store = settings.resolved_model_store()
    registry: ModelRegistry
    if engine_path is None:
        registry = ModelRegistry(store, settings, metrics)
    else:
        from .engine_link import RemoteRegistry

        registry = RemoteRegistry(store, settings, metrics, engine_path)
    encode_pool = BasePriorityExecutor(settings.encode_threads, "encode")
    ctx = ServiceContext(settings, metrics, registry, lifecycle, encode_pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # asyncio.to_thread's threads (model loads) keep the base priority: see priority.py.
        asyncio.get_running_loop().set_default_executor(BasePriorityExecutor(4, "to-thread"))
        loading = asyncio.get_running_loop().create_task(registry.load_all())
        loading.add_done_callback(lambda _: freeze_startup_objects())
        app.state.loading = loading
        if engine_path is not None:
            # One front end of several: it takes no connection from the shared socket before
            # its models are ready, so a starting (or restarted) front end never answers 503.
            await loading
        try:
            yield
        finally:
            lifecycle.begin_drain()
            if not loading.done():
                loading.cancel()
            await lifecycle.wait_drained(registry.idle, settings.drain_timeout_s)
            await registry.close(settings.drain_timeout_s)
            encode_pool.shutdown(wait=False)

    app = ServiceApp(
        title="gan-serve",
        version="0.1.0",
        summary="Generate images from GAN generators (ONNX) with dynamic batching.",
        lifespan=lifespan,
        # /docs and /openapi.json come from routers/docs.py, with no CDN behind them.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ctx
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.admission = make_admission(ctx)

    def count(path: str, exc: ServiceError) -> None:
        count_refusal(ctx, path, exc)

    install_error_handlers(app, lambda request, exc: count(request.url.path, exc))
    routes = partial(FastAPI.__call__, app)
    app.service_layer = ServiceMiddleware(
        LeanRoutes(routes, ctx) if settings.fast_path else routes,
        metrics=metrics,
        lifecycle=lifecycle,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        on_refusal=count,
    )
    for name in CORE_ROUTERS:
        app.include_router(importlib.import_module(f"{ROUTERS_PACKAGE}.{name}").router)
    for name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(f"{ROUTERS_PACKAGE}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{ROUTERS_PACKAGE}.{name}":
                raise
            continue
        app.include_router(module.router)
    return app
