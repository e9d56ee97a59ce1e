"""``/v1`` generation: GET and POST generate (default or pinned version) and POST interpolate.

Each route has one implementation, an ``answer_*`` function over plain request parts (name,
query pairs, body reader, a wait-for-disconnect), which goes through the pipeline
(service/pipeline.py) and builds the HTTP answer. The FastAPI routes below call it, and the lean
path (service/fastpath.py) calls the same function for the hot routes without FastAPI's
per-request work, so both validate, answer and count alike. Routes parse their own query and
body (``service.schemas``); their OpenAPI entries come from the same models.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.types import Receive

from .. import encode
from ..access import may_load
from ..context import ServiceContext, context
from ..errors import ERROR_RESPONSES
from ..pipeline import (
    Inputs,
    Output,
    WaitGone,
    check_room,
    deadline,
    generate,
    plan_generate,
    plan_interpolate,
    plan_png,
    png_etag,
    resolve,
    timed,
)
from ..registry import LoadedModel
from ..schemas import (
    GenerateRequest,
    InterpolateRequest,
    PngQuery,
    json_schema_of,
    parse_json_body,
    parse_png_query,
    query_parameters,
)

router = APIRouter(tags=["generate"], responses=ERROR_RESPONSES)

PNG = "image/png"
NPY = "application/x-npy"
JSON = "application/json"
ReadBody = Callable[[], Awaitable[bytes]]


def waiter(receive: Receive) -> WaitGone:
    """A wait that returns once the client has disconnected (read after the body)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


# --- answers ---------------------------------------------------------------------------------

# Proxies refuse large response headers (nginx: 4 KiB by default), so long lists are left out;
# the seeds of a request without explicit seeds are always one range, which stays short.
MAX_LIST_HEADER = 1024


def seed_ranges(seeds: list[int]) -> str:
    """``[5, 6, 7, 9]`` -> ``"5-7,9"``: runs of consecutive seeds as inclusive ranges."""
    parts: list[str] = []
    start = prev = seeds[0]
    for seed in [*seeds[1:], None]:
        if seed is not None and seed == prev + 1:
            prev = seed
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seed is not None:
            start = prev = seed
    return ",".join(parts)


def _headers(model: LoadedModel, inputs: Inputs) -> dict[str, str]:
    headers = {
        "X-Model-Name": model.name,
        "X-Model-Version": str(model.version),
        "X-Provider": model.provider,
    }
    if inputs.seeds:
        text = seed_ranges(inputs.seeds)
        if len(text) <= MAX_LIST_HEADER:
            headers["X-Seeds"] = text
    if inputs.labels is not None:
        text = ",".join(map(str, inputs.labels.tolist()))
        if len(text) <= MAX_LIST_HEADER:
            headers["X-Labels"] = text
    return headers


def _generate_output(ctx: ServiceContext, body: GenerateRequest, inputs: Inputs) -> Output:
    """How a ``POST .../generate`` answer is encoded: one PNG or npy on the inference worker,
    the rest on the encode pool."""
    level = ctx.settings.png_compress_level
    n = len(inputs.z)
    if body.format == "npy":
        return Output(NPY, on_worker=timed(ctx, "npy", encode.npy_bytes))
    if body.format == "png" and n == 1:
        return Output(PNG, on_worker=timed(ctx, "png", lambda im: encode.png_bytes(im[0], level)))
    if body.format == "png":
        pngs = timed(ctx, "png", lambda _, im: json.dumps(encode.base64_pngs(im, level)).encode())
        return Output(JSON, off_loop=pngs)
    if body.format == "grid":
        columns = body.columns
        grid = timed(ctx, "grid", lambda _, im: encode.grid_png(im, columns, level))
        return Output(PNG, off_loop=grid)

    def as_json(model: LoadedModel, images: np.ndarray) -> bytes:
        pngs = encode.base64_pngs(images, level)
        seeds, labels = inputs.seeds, inputs.labels
        items = [
            {
                "seed": seeds[i] if seeds is not None else None,
                "label": int(labels[i]) if labels is not None else None,
                "png": pngs[i],
            }
            for i in range(n)
        ]
        return json.dumps({"model": model.name, "version": model.version, "images": items}).encode()

    return Output(JSON, off_loop=timed(ctx, "json", as_json))


async def answer_generate(
    ctx: ServiceContext,
    name: str,
    version: int | None,
    content_type: str | None,
    read_body: ReadBody,
    gone: WaitGone,
    loads: bool = False,
) -> Response:
    """``POST .../generate``: the model first, then (if its queue has room) the body."""
    model = await resolve(ctx, name, version, loads)
    check_room(model, 1)  # before reading the body: a refusal under a flood stays cheap
    body = parse_json_body(GenerateRequest, content_type, await read_body(), required=False)
    inputs = plan_generate(ctx, model, body)
    output = _generate_output(ctx, body, inputs)
    until = deadline(ctx, body.timeout_ms / 1000 if body.timeout_ms else None)
    model, content = await generate(ctx, name, version, model, inputs, output, until, gone)
    return Response(content, media_type=output.media_type, headers=_headers(model, inputs))


async def answer_png(
    ctx: ServiceContext,
    name: str,
    version: int | None,
    pairs: list[tuple[str, str]],
    if_none_match: str | None,
    gone: WaitGone,
    loads: bool = False,
) -> Response:
    """``GET .../generate``: one PNG (a grid for n > 1), with an ETag when seeded."""
    query = parse_png_query(pairs)
    model = await resolve(ctx, name, version, loads)
    etag = png_etag(ctx, model, query)
    if etag is not None and if_none_match is not None:
        if if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    inputs = plan_png(ctx, model, query)
    level = ctx.settings.png_compress_level
    if query.n == 1:
        output = Output(PNG, on_worker=timed(ctx, "png", lambda im: encode.png_bytes(im[0], level)))
    else:
        columns = query.columns
        grid = timed(ctx, "grid", lambda _, im: encode.grid_png(im, columns, level))
        output = Output(PNG, off_loop=grid)
    asked = model
    model, content = await generate(ctx, name, version, model, inputs, output, deadline(ctx), gone)
    headers = _headers(model, inputs)
    if etag is not None and model.version == asked.version:
        headers.update({"ETag": etag, "Cache-Control": "no-cache"})
    else:
        headers["Cache-Control"] = "no-store"
    return Response(content, media_type=PNG, headers=headers)


async def answer_interpolate(
    ctx: ServiceContext, name: str, content_type: str | None, read_body: ReadBody, gone: WaitGone
) -> Response:
    """``POST .../interpolate``: frames of a walk between two seeds or latents."""
    model = await resolve(ctx, name)
    body = parse_json_body(InterpolateRequest, content_type, await read_body(), required=True)
    inputs = plan_interpolate(ctx, model, body)
    level = ctx.settings.png_compress_level
    if body.format == "grid":
        columns = body.columns or body.steps
        output = Output(
            PNG, off_loop=timed(ctx, "grid", lambda _, im: encode.grid_png(im, columns, level))
        )
    elif body.format == "npy":
        output = Output(NPY, on_worker=timed(ctx, "npy", encode.npy_bytes))
    else:
        frames = timed(
            ctx,
            "frames",
            lambda _, im: json.dumps({"frames": encode.base64_pngs(im, level)}).encode(),
        )
        output = Output(JSON, off_loop=frames)
    until = deadline(ctx, body.timeout_ms / 1000 if body.timeout_ms else None)
    model, content = await generate(ctx, name, None, model, inputs, output, until, gone)
    return Response(content, media_type=output.media_type, headers=_headers(model, inputs))


# --- routes ----------------------------------------------------------------------------------

GENERATED = {200: {"content": {PNG: {}, NPY: {}, JSON: {}}, "description": "The images"}}
PNG_ONLY = {
    200: {"content": {PNG: {}}, "description": "A PNG"},
    304: {"description": "Not modified"},
}


@router.post(
    "/v1/models/{name}/generate",
    summary="Generate n images from seeds or latents",
    responses=GENERATED,
    openapi_extra=json_schema_of(GenerateRequest),
    response_class=Response,
)
async def generate_post(request: Request, name: str) -> Response:
    return await answer_generate(
        context(request),
        name,
        None,
        request.headers.get("content-type"),
        request.body,
        waiter(request.receive),
    )


@router.post(
    "/v1/models/{name}/versions/{version}/generate",
    summary="Generate with one version (loading it beside the default needs the admin token)",
    responses=GENERATED,
    openapi_extra=json_schema_of(GenerateRequest),
    response_class=Response,
)
async def generate_post_version(request: Request, name: str, version: int) -> Response:
    ctx = context(request)
    return await answer_generate(
        ctx,
        name,
        version,
        request.headers.get("content-type"),
        request.body,
        waiter(request.receive),
        may_load(request, ctx.settings),
    )


@router.get(
    "/v1/models/{name}/generate",
    summary="One PNG (a grid when n > 1); same query, same bytes, with an ETag",
    responses=PNG_ONLY,
    openapi_extra=query_parameters(PngQuery),
    response_class=Response,
)
async def generate_get(request: Request, name: str) -> Response:
    return await answer_png(
        context(request),
        name,
        None,
        request.query_params.multi_items(),
        request.headers.get("if-none-match"),
        waiter(request.receive),
    )


@router.get(
    "/v1/models/{name}/versions/{version}/generate",
    summary="One PNG from one version (loading it beside the default needs the admin token)",
    responses=PNG_ONLY,
    openapi_extra=query_parameters(PngQuery),
    response_class=Response,
)
async def generate_get_version(request: Request, name: str, version: int) -> Response:
    ctx = context(request)
    return await answer_png(
        ctx,
        name,
        version,
        request.query_params.multi_items(),
        request.headers.get("if-none-match"),
        waiter(request.receive),
        may_load(request, ctx.settings),
    )


@router.post(
    "/v1/models/{name}/interpolate",
    summary="A lerp or slerp walk between two seeds or latents, as a grid or frames",
    responses=GENERATED,
    openapi_extra=json_schema_of(InterpolateRequest, required=True),
    response_class=Response,
)
async def interpolate(request: Request, name: str) -> Response:
    return await answer_interpolate(
        context(request),
        name,
        request.headers.get("content-type"),
        request.body,
        waiter(request.receive),
    )
