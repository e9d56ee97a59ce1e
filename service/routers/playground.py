"""The playground page at ``GET /`` and the small JSON API it calls.

The page (``service/static/``) is plain HTML, CSS and JavaScript with no build step and no
external assets. Its API goes through each model's batcher like every other endpoint:

* ``GET /playground/api/models``: served models with classes and image size.
* ``GET /playground/api/samples?model&seed&n&label``: n images for seeds seed..seed+n-1.
* ``GET /playground/api/interpolate?model&seed_a&seed_b&steps&label``: frames of a
  spherical walk between the latents of two seeds, both ends included.

Images come back as base64 PNGs inside JSON so the page can show them as ``<img>`` tiles.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from service.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from service.context import context
from service.encode import base64_pngs
from service.latents import interpolate
from service.manifest import MAX_SEED, model_latents
from service.registry import LoadedModel, ModelNotFound

router = APIRouter(tags=["playground"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
MAX_TILES = 64
MAX_STEPS = 32


def _error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    body = {"error": {"code": "bad_request" if status < 500 else "unavailable", "message": message}}
    body["error"]["field"] = field
    return JSONResponse(body, status_code=status, headers=headers or None)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


@router.get("/playground/{asset}", include_in_schema=False)
async def asset(asset: str) -> Response:
    if asset not in ASSETS:
        return _error(404, f"no playground asset {asset!r}", "asset")
    return FileResponse(STATIC_DIR / asset, media_type=ASSETS[asset])


@router.get("/playground/api/models")
async def models(request: Request) -> dict[str, Any]:
    registry = context(request).registry
    out = []
    for name in registry.names():
        m = registry.get(name).manifest
        out.append(
            {
                "name": name,
                "version": m.version,
                "num_classes": m.num_classes,
                "class_names": list(m.class_names) or [str(i) for i in range(m.num_classes)],
                "image_size": m.image_size,
                "channels": m.channels,
                "description": m.description,
                "family": m.family,
            }
        )
    return {"models": out}


def _model(request: Request, name: str) -> LoadedModel:
    try:
        return context(request).registry.get(name)
    except ModelNotFound:
        raise LookupError(f"unknown model {name!r}") from None


def _labels(loaded: LoadedModel, label: int | None, seeds: list[int]) -> np.ndarray | None:
    """One class for all tiles, or ``seed mod classes`` (the service's balanced default)."""
    classes = loaded.manifest.num_classes
    if classes == 0:
        if label is not None:
            raise ValueError(f"model {loaded.name} is unconditional and takes no label")
        return None
    if label is None:
        return np.array([s % classes for s in seeds], dtype=np.int64)
    if not 0 <= label < classes:
        raise ValueError(f"label must be 0..{classes - 1}, got {label}")
    return np.full(len(seeds), label, dtype=np.int64)


async def _render(
    request: Request, loaded: LoadedModel, z: np.ndarray, labels: np.ndarray | None
) -> list[str]:
    settings = context(request).settings
    deadline = time.monotonic() + settings.request_timeout_s
    images = await loaded.batcher.submit(z, labels, deadline)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        context(request).encode_pool, base64_pngs, images, settings.png_compress_level
    )


async def _answer(request: Request, work) -> Response:
    """Run ``work`` and map the batcher's refusals and bad arguments to JSON errors."""
    try:
        return JSONResponse(await work())
    except LookupError as exc:
        return _error(404, str(exc), "model")
    except ValueError as exc:
        return _error(422, str(exc), "label")
    except QueueFull as exc:
        return _error(503, f"overloaded: {exc}", None, **{"Retry-After": str(exc.retry_after)})
    except DeadlineExceeded:
        return _error(504, "deadline passed while queued")
    except BatcherClosed:
        return _error(503, "model is being replaced", None, **{"Retry-After": "1"})


@router.get("/playground/api/samples")
async def samples(
    request: Request,
    model: str,
    seed: int = Query(0, ge=0, le=MAX_SEED - MAX_TILES),
    n: int = Query(16, ge=1, le=MAX_TILES),
    label: int | None = Query(None, ge=0),
) -> Response:
    async def work() -> dict[str, Any]:
        loaded = _model(request, model)
        seeds = list(range(seed, seed + n))
        labels = _labels(loaded, label, seeds)
        z = model_latents(loaded.manifest, seeds)
        images = await _render(request, loaded, z, labels)
        return {
            "model": model,
            "version": loaded.version,
            "seeds": seeds,
            "labels": None if labels is None else labels.tolist(),
            "images": images,
        }

    return await _answer(request, work)


@router.get("/playground/api/interpolate")
async def interpolate_frames(
    request: Request,
    model: str,
    seed_a: int = Query(..., ge=0, le=MAX_SEED),
    seed_b: int = Query(..., ge=0, le=MAX_SEED),
    steps: int = Query(16, ge=2, le=MAX_STEPS),
    label: int | None = Query(None, ge=0),
) -> Response:
    async def work() -> dict[str, Any]:
        loaded = _model(request, model)
        ends = model_latents(loaded.manifest, [seed_a, seed_b])
        z = interpolate(ends[0], ends[1], steps, "slerp")
        labels = _labels(loaded, label, [seed_a] * steps)
        frames = await _render(request, loaded, z, labels)
        return {"model": model, "seed_a": seed_a, "seed_b": seed_b, "frames": frames}

    return await _answer(request, work)
