"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..context import context
from ..metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", summary="Readiness: 503 while loading, warming or draining")
async def readyz(request: Request) -> JSONResponse:
    ctx = context(request)
    registry = ctx.registry
    if ctx.lifecycle.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if registry.state == "loading":
        return JSONResponse({"status": "loading"}, status_code=503)
    if not registry.models:
        return JSONResponse(
            {"status": "no_models", "errors": registry.load_errors}, status_code=503
        )
    models = {m.name: m.version for m in registry.models.values()}
    return JSONResponse({"status": "ready", "models": models})


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
