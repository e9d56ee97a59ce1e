"""The playground page at ``GET /`` and the small JSON API it calls.

The page (``service/static/``) is plain HTML, CSS and JavaScript with no build step and no
external assets. Its API goes through the generation pipeline like every other endpoint:

* ``GET /playground/api/models``: served models with classes and image size.
* ``GET /playground/api/samples?model&seed&n&label``: n images for seeds seed..seed+n-1.
* ``GET /playground/api/interpolate?model&seed_a&seed_b&steps&label``: frames of a
  spherical walk between the latents of two seeds, both ends included.

For an image-to-image model the page shows a drawing canvas and an upload instead, and posts
the image to the public ``POST /v1/models/{name}/translate``.

Images come back as base64 PNGs inside JSON so the page can show them as ``<img>`` tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ..context import context
from ..encode import base64_pngs
from ..errors import ERROR_RESPONSES
from ..manifest import MAX_SEED
from ..pipeline import (
    Inputs,
    Output,
    deadline,
    generate,
    plan_generate,
    plan_interpolate,
    serving,
    timed,
)
from ..registry import LoadedModel
from ..schemas import GenerateRequest, InterpolateRequest
from ..text import MAX_CAPTION_CHARS
from .generate import JSON, waiter
from .models import caption_info

router = APIRouter(tags=["playground"], responses=ERROR_RESPONSES)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
MAX_TILES = 64
MAX_STEPS = 32


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": {"code": "not_found", "message": message, "field": field}}
    return JSONResponse(body, status_code=status)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


@router.get("/playground/{asset}", include_in_schema=False)
async def asset(asset: str) -> Response:
    if asset not in ASSETS:
        return _error(404, f"no playground asset {asset[:64]!r}", "asset")
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
                "family": m.family or "dcgan",
                "kind": m.kind,
                **caption_info(registry.get(name)),
                "domains": (
                    [m.translation.domain_a, m.translation.domain_b] if m.translation else None
                ),
            }
        )
    return {"models": out}


async def _tiles(
    request: Request, name: str, inputs_for: Callable[[LoadedModel], Inputs]
) -> tuple[LoadedModel, Inputs, list[str]]:
    """resolve -> plan -> submit -> base64 PNG tiles, through the pipeline."""
    ctx = context(request)
    model = serving(ctx, name)
    inputs = inputs_for(model)
    level = ctx.settings.png_compress_level
    output = Output(JSON, off_loop=timed(ctx, "json", lambda _, im: base64_pngs(im, level)))
    model, tiles = await generate(
        ctx, name, None, model, inputs, output, deadline(ctx), waiter(request.receive)
    )
    return model, inputs, tiles


@router.get("/playground/api/samples")
async def samples(
    request: Request,
    model: str,
    seed: int = Query(0, ge=0, le=MAX_SEED - MAX_TILES),
    n: int = Query(16, ge=1, le=MAX_TILES),
    label: int | None = Query(None, ge=0),
) -> dict[str, Any]:
    ctx = context(request)
    body = GenerateRequest(seed=seed, n=n, labels=label)
    loaded, inputs, images = await _tiles(request, model, lambda m: plan_generate(ctx, m, body))
    return {
        "model": model,
        "version": loaded.version,
        "seeds": inputs.seeds,
        "labels": None if inputs.labels is None else inputs.labels.tolist(),
        "images": images,
    }


@router.get("/playground/api/interpolate")
async def interpolate_frames(
    request: Request,
    model: str,
    seed_a: int = Query(..., ge=0, le=MAX_SEED),
    seed_b: int = Query(..., ge=0, le=MAX_SEED),
    steps: int = Query(16, ge=2, le=MAX_STEPS),
    label: int | None = Query(None, ge=0),
) -> dict[str, Any]:
    ctx = context(request)
    body = InterpolateRequest(seeds=[seed_a, seed_b], steps=steps, method="slerp", label=label)
    _, _, frames = await _tiles(request, model, lambda m: plan_interpolate(ctx, m, body))
    return {"model": model, "seed_a": seed_a, "seed_b": seed_b, "frames": frames}


@router.get("/playground/api/text")
async def text_samples(
    request: Request,
    model: str,
    text: str = Query(..., max_length=MAX_CAPTION_CHARS),
    seed: int = Query(0, ge=0, le=MAX_SEED - MAX_TILES),
    n: int = Query(8, ge=1, le=MAX_TILES),
) -> dict[str, Any]:
    """A text-to-image model's images of one caption, seeds seed..seed+n-1."""
    ctx = context(request)
    body = GenerateRequest(seed=seed, n=n, text=text)
    loaded, inputs, images = await _tiles(request, model, lambda m: plan_generate(ctx, m, body))
    return {
        "model": model,
        "version": loaded.version,
        "text": text,
        "seeds": inputs.seeds,
        "images": images,
    }
