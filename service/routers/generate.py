"""Generation: POST/GET generate and POST interpolate.

Stages: validate request -> latents (seeds or given) -> batcher -> session -> split -> encode.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.types import Receive

from .. import encode
from ..batcher import BatcherClosed, DeadlineExceeded, Finish, QueueFull, Ticket
from ..context import ServiceContext, context
from ..errors import ApiError, bad_input
from ..latents import (
    interpolate,
    label_index,
    labels_for,
    latents_from_request,
    seed_latents,
    seeds_for,
    truncate,
)
from ..manifest import MAX_SEED
from ..registry import LoadedModel, ReloadRefused
from ..schemas import GenerateRequest, InterpolateRequest, check_generate, check_interpolate
from .models import get_model

router = APIRouter(tags=["generate"])

PNG = "image/png"
NPY = "application/x-npy"


# --- shared stages -------------------------------------------------------------------------


def _deadline(ctx: ServiceContext, timeout_ms: int | None) -> float:
    seconds = timeout_ms / 1000.0 if timeout_ms is not None else ctx.settings.request_timeout_s
    return time.monotonic() + seconds


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _resolve(request: Request, name: str, version: int | None) -> LoadedModel:
    """The serving version of ``name``, or the version asked for in the path."""
    if version is None:
        return get_model(request, name)
    get_model(request, name)  # 404 / 503 loading, as for the default version
    try:
        return await context(request).registry.get_version(name, version)
    except ReloadRefused as exc:
        status = 404 if exc.code in ("version_not_found", "version_not_loaded") else 409
        raise ApiError(status, exc.code, str(exc), "version") from None


async def _infer(
    request: Request,
    name: str,
    version: int | None,
    model: LoadedModel,
    z: np.ndarray,
    labels: np.ndarray | None,
    deadline: float,
    finish: Finish | None = None,
) -> tuple[LoadedModel, Any]:
    """Submit to the batcher; map refusals to HTTP; drop the work if the client goes away."""
    return await infer(
        context(request), request.receive, name, version, model, z, labels, deadline, finish
    )


async def infer(
    ctx: ServiceContext,
    receive: Receive,
    name: str,
    version: int | None,
    model: LoadedModel,
    z: np.ndarray,
    labels: np.ndarray | None,
    deadline: float,
    finish: Finish | None = None,
) -> tuple[LoadedModel, Any]:
    """:func:`_infer` on a raw ASGI ``receive``; with ``finish``, its result instead of images."""
    for _ in range(3):  # a hot swap may close the batcher between lookup and submit
        try:
            ticket = model.batcher.enqueue(z, labels, deadline, finish)
            return model, await _unless_gone(model, ticket, receive)
        except BatcherClosed:  # swapped out (or evicted) between lookup and submit
            if version is None:
                newer = ctx.registry.models.get(name)
            else:
                try:
                    newer = await ctx.registry.get_version(name, version)
                except (KeyError, ReloadRefused):
                    newer = None
            if newer is None or newer is model or not _same_inputs(newer, model):
                break
            model = newer
        except QueueFull as exc:
            raise _queue_full(name, exc) from None
        except DeadlineExceeded:
            raise ApiError(
                504, "deadline_exceeded", "deadline passed while queued", "timeout_ms"
            ) from None
    raise ApiError(
        503, "model_unavailable", f"{name} is being replaced; retry", None, {"Retry-After": "1"}
    )


async def _unless_gone(model: LoadedModel, ticket: Ticket, receive: Receive) -> Any:
    """Wait for a queued request; if the client disconnects first, withdraw it (499)."""
    future = ticket.future
    gone = asyncio.ensure_future(_wait_disconnect(receive))

    def client_left(_: asyncio.Future) -> None:
        future.cancel()  # no-op once the result is in

    gone.add_done_callback(client_left)
    try:
        return await future
    except asyncio.CancelledError:
        model.batcher.withdraw(ticket)
        if gone.done() and not gone.cancelled():
            raise ApiError(499, "client_gone", "client disconnected") from None
        raise
    finally:
        gone.remove_done_callback(client_left)
        gone.cancel()


class Overloaded(ApiError):
    """503 ``queue_full``, raised before any work was done for the request."""


def _queue_full(name: str, exc: QueueFull) -> ApiError:
    return Overloaded(
        503,
        "queue_full",
        f"too many images queued for {name}; retry later",
        None,
        {"Retry-After": str(exc.retry_after)},
    )


def check_room(model: LoadedModel, n: int) -> None:
    """Refuse at once (Overloaded) when the model's queue has no room for n more images."""
    try:
        model.batcher.check_room(n)
    except QueueFull as exc:
        raise _queue_full(model.name, exc) from None


def _same_inputs(a: LoadedModel, b: LoadedModel) -> bool:
    ma, mb = a.manifest, b.manifest
    return (ma.nz, ma.num_classes) == (mb.nz, mb.num_classes)


def timed_encoder(
    ctx: ServiceContext, fmt: str, fn: Callable[[np.ndarray], bytes]
) -> Callable[[np.ndarray], bytes]:
    """``fn`` timed into the encode histogram; passed to the batcher as ``finish``, it runs on
    the inference worker right after the batch (no second hop for small bodies)."""
    histogram = ctx.metrics.encode_duration.labels(format=fmt)

    def run(images: np.ndarray) -> bytes:
        started = time.perf_counter()
        body = fn(images)
        histogram.observe(time.perf_counter() - started)
        return body

    return run


async def _encode(ctx: ServiceContext, fmt: str, fn: Callable[[], bytes]) -> bytes:
    """Run an encoder on the encode pool (off the event loop) and time it."""
    started = time.perf_counter()
    body = await asyncio.get_running_loop().run_in_executor(ctx.encode_pool, fn)
    ctx.metrics.encode_duration.labels(format=fmt).observe(time.perf_counter() - started)
    return body


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


def _headers(model: LoadedModel, seeds: list[int] | None, labels: np.ndarray | None) -> dict:
    headers = {
        "X-Model-Name": model.name,
        "X-Model-Version": str(model.version),
        "X-Provider": model.provider,
    }
    if seeds:
        text = seed_ranges(seeds)
        if len(text) <= MAX_LIST_HEADER:
            headers["X-Seeds"] = text
    if labels is not None:
        text = ",".join(map(str, labels.tolist()))
        if len(text) <= MAX_LIST_HEADER:
            headers["X-Labels"] = text
    return headers


def _check_n(ctx: ServiceContext, n: int, field: str = "n") -> None:
    limit = ctx.settings.max_images_per_request
    if n > limit:
        raise bad_input(field, f"at most {limit} images per request, got {n}", "out_of_range")


# --- POST generate -------------------------------------------------------------------------


@router.post(
    "/v1/models/{name}/generate",
    summary="Generate n images from seeds or latents",
    responses={200: {"content": {PNG: {}, NPY: {}, "application/json": {}}}},
)
async def generate(request: Request, name: str, body: GenerateRequest | None = None) -> Response:
    return await _generate(request, name, None, body)


@router.post(
    "/v1/models/{name}/versions/{version}/generate",
    summary="Generate with one version (loaded beside the default on first use)",
    responses={200: {"content": {PNG: {}, NPY: {}, "application/json": {}}}},
)
async def generate_version(
    request: Request, name: str, version: int, body: GenerateRequest | None = None
) -> Response:
    return await _generate(request, name, version, body)


async def _generate(
    request: Request, name: str, version: int | None, body: GenerateRequest | None
) -> Response:
    ctx = context(request)
    model = await _resolve(request, name, version)
    plan = plan_generate(ctx, model, body or GenerateRequest())  # no body: one random image
    return await respond_generate(ctx, request.receive, name, version, model, plan)


@dataclass
class GeneratePlan:
    """A validated ``POST .../generate``: the model inputs, nothing computed yet."""

    body: GenerateRequest
    seeds: list[int] | None
    labels: np.ndarray | None
    z: np.ndarray


def plan_generate(ctx: ServiceContext, model: LoadedModel, body: GenerateRequest) -> GeneratePlan:
    """Cross-field and per-model checks (ApiError naming the field), latents and labels."""
    m = model.manifest
    check_generate(body)
    n = body.count
    _check_n(ctx, n, "latents" if body.latents is not None else "seeds" if body.seeds else "n")
    seeds: list[int] | None
    z: np.ndarray | None = None
    if body.latents is not None:
        seeds = None
        z = latents_from_request(body.latents, m.nz, "latents")
    else:
        seeds = list(body.seeds) if body.seeds is not None else seeds_for(body.seed, n)
    labels = labels_for(m, body.labels, n, seeds)
    check_room(model, n)  # before the seed latents: a refusal under a flood stays cheap
    if z is None:
        z = seed_latents(seeds, m, body.truncation)
    return GeneratePlan(body, seeds, labels, truncate(z, body.truncation, m))


async def respond_generate(
    ctx: ServiceContext,
    receive: Receive,
    name: str,
    version: int | None,
    model: LoadedModel,
    plan: GeneratePlan,
) -> Response:
    """Run a planned ``POST .../generate`` through the batcher and encode the answer."""
    body, seeds, labels, z = plan.body, plan.seeds, plan.labels, plan.z
    n = len(z)
    deadline = _deadline(ctx, body.timeout_ms)
    level = ctx.settings.png_compress_level
    fmt = body.format
    if (fmt == "png" and n == 1) or fmt == "npy":  # small or a copy: encoded on the worker
        if fmt == "npy":
            finish = timed_encoder(ctx, "npy", encode.npy_bytes)
        else:
            finish = timed_encoder(ctx, "png", lambda images: encode.png_bytes(images[0], level))
        model, content = await infer(
            ctx, receive, name, version, model, z, labels, deadline, finish
        )
        headers = _headers(model, seeds, labels)
        return Response(content, media_type=NPY if fmt == "npy" else PNG, headers=headers)
    model, images = await infer(ctx, receive, name, version, model, z, labels, deadline)
    headers = _headers(model, seeds, labels)
    if fmt == "png":
        content = await _encode(
            ctx, "png", lambda: json.dumps(encode.base64_pngs(images, level)).encode()
        )
        return Response(content, media_type="application/json", headers=headers)
    if fmt == "grid":
        content = await _encode(ctx, "grid", lambda: encode.grid_png(images, body.columns, level))
        return Response(content, media_type=PNG, headers=headers)

    def as_json() -> bytes:
        pngs = encode.base64_pngs(images, level)
        items = [
            {
                "seed": seeds[i] if seeds is not None else None,
                "label": int(labels[i]) if labels is not None else None,
                "png": pngs[i],
            }
            for i in range(n)
        ]
        doc = {"model": model.name, "version": model.version, "images": items}
        return json.dumps(doc).encode()

    content = await _encode(ctx, "json", as_json)
    return Response(content, media_type="application/json", headers=headers)


# --- GET generate (cacheable PNG) ----------------------------------------------------------


@dataclass
class PngQuery:
    """Query parameters of ``GET .../generate``."""

    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None
    label: Annotated[str | None, Query(max_length=64)] = None
    n: Annotated[int, Query(ge=1)] = 1
    truncation: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = None
    columns: Annotated[int | None, Query(ge=1, le=256)] = None


@router.get(
    "/v1/models/{name}/generate",
    summary="One PNG (a grid when n > 1); same query, same bytes, with an ETag",
    responses={200: {"content": {PNG: {}}}, 304: {"description": "Not modified"}},
    response_class=Response,
)
async def generate_png(
    request: Request, name: str, query: Annotated[PngQuery, Depends()]
) -> Response:
    return await _generate_png(request, name, None, query)


@router.get(
    "/v1/models/{name}/versions/{version}/generate",
    summary="One PNG from one version (loaded beside the default on first use)",
    responses={200: {"content": {PNG: {}}}, 304: {"description": "Not modified"}},
    response_class=Response,
)
async def generate_png_version(
    request: Request, name: str, version: int, query: Annotated[PngQuery, Depends()]
) -> Response:
    return await _generate_png(request, name, version, query)


async def _generate_png(
    request: Request, name: str, version: int | None, query: PngQuery
) -> Response:
    ctx = context(request)
    model = await _resolve(request, name, version)
    plan = plan_png(ctx, model, query, request.headers.get("if-none-match"))
    if isinstance(plan, Response):
        return plan
    return await respond_png(ctx, request.receive, name, version, model, plan)


@dataclass
class PngPlan:
    """A validated ``GET .../generate``: the model inputs and the ETag, nothing computed yet."""

    seeds: list[int]
    labels: np.ndarray | None
    z: np.ndarray
    columns: int | None
    etag: str | None


def plan_png(
    ctx: ServiceContext, model: LoadedModel, query: PngQuery, if_none_match: str | None
) -> PngPlan | Response:
    """Validate the query against the model (ApiError naming the field), or answer 304."""
    seed, label, n, truncation, columns = (
        query.seed,
        query.label,
        query.n,
        query.truncation,
        query.columns,
    )
    m = model.manifest
    _check_n(ctx, n)
    label_value: int | str | None = None
    if label is not None:
        label_value = int(label) if label.lstrip("-").isdigit() else label
        if m.conditional:
            label_value = label_index(m, label_value, "label")
    etag = None
    if seed is not None:
        key = json.dumps(
            [
                m.name,
                m.version,
                m.artifact.sha256,
                seed,
                label_value,
                n,
                truncation,
                columns,
                ctx.settings.png_compress_level,
            ]
        )
        etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
        match = if_none_match
        if match is not None and (
            match.strip() == "*" or etag in [t.strip() for t in match.split(",")]
        ):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    seeds = seeds_for(seed, n)
    labels = labels_for(m, label_value, n, seeds, "label")
    check_room(model, n)  # before the seed latents: a refusal under a flood stays cheap
    z = truncate(seed_latents(seeds, m, truncation), truncation, m)
    return PngPlan(seeds, labels, z, columns, etag)


async def respond_png(
    ctx: ServiceContext,
    receive: Receive,
    name: str,
    version: int | None,
    model: LoadedModel,
    plan: PngPlan,
) -> Response:
    """Run a planned ``GET .../generate`` through the batcher; the PNG is encoded on the worker
    for one image, on the encode pool for a grid."""
    level = ctx.settings.png_compress_level
    m = model.manifest
    deadline = _deadline(ctx, None)
    if len(plan.seeds) == 1:
        finish = timed_encoder(ctx, "png", lambda images: encode.png_bytes(images[0], level))
        model, content = await infer(
            ctx, receive, name, version, model, plan.z, plan.labels, deadline, finish
        )
    else:
        model, images = await infer(
            ctx, receive, name, version, model, plan.z, plan.labels, deadline
        )
        columns = plan.columns
        content = await _encode(ctx, "grid", lambda: encode.grid_png(images, columns, level))
    headers = _headers(model, plan.seeds, plan.labels)
    if plan.etag is not None and model.version == m.version:
        headers.update({"ETag": plan.etag, "Cache-Control": "no-cache"})
    else:
        headers["Cache-Control"] = "no-store"
    return Response(content, media_type=PNG, headers=headers)


# --- POST interpolate ----------------------------------------------------------------------


@router.post(
    "/v1/models/{name}/interpolate",
    summary="A lerp or slerp walk between two seeds or latents, as a grid or frames",
    responses={200: {"content": {PNG: {}, NPY: {}, "application/json": {}}}},
)
async def interpolate_route(request: Request, name: str, body: InterpolateRequest) -> Response:
    ctx = context(request)
    model = get_model(request, name)
    m = model.manifest
    check_interpolate(body)
    limit = ctx.settings.max_interpolation_steps
    if body.steps > limit:
        raise bad_input("steps", f"at most {limit} steps, got {body.steps}", "out_of_range")
    if body.seeds is not None:
        ends = seed_latents(body.seeds, m, body.truncation)
        first_seed = body.seeds[0]
    else:
        ends = latents_from_request(body.latents, m.nz, "latents")
        first_seed = None
    z = truncate(interpolate(ends[0], ends[1], body.steps, body.method), body.truncation, m)
    label_value = body.label
    if label_value is None and m.conditional:
        label_value = (first_seed or 0) % m.num_classes
    labels = labels_for(m, label_value, body.steps, None, "label")
    deadline = _deadline(ctx, body.timeout_ms)
    model, images = await _infer(request, name, None, model, z, labels, deadline)
    headers = _headers(model, list(body.seeds) if body.seeds else None, labels)
    level = ctx.settings.png_compress_level
    if body.format == "grid":
        columns = body.columns or body.steps
        content = await _encode(ctx, "grid", lambda: encode.grid_png(images, columns, level))
        return Response(content, media_type=PNG, headers=headers)
    if body.format == "npy":
        content = await _encode(ctx, "npy", lambda: encode.npy_bytes(images))
        return Response(content, media_type=NPY, headers=headers)

    def frames() -> bytes:
        return json.dumps({"frames": encode.base64_pngs(images, level)}).encode()

    content = await _encode(ctx, "frames", frames)
    return Response(content, media_type="application/json", headers=headers)
