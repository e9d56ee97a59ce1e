"""The generation pipeline every front door uses: resolve -> plan -> submit -> encode.

``/v1`` (GET and POST generate, interpolate), ``/v2`` (Open Inference Protocol) and the
playground all call these stages; none of them knows HTTP. Each stage raises
:class:`service.errors.ServiceError` with a code; ``service/errors.py`` turns it into each
door's answer and refusal metric.

* **resolve**: the model a request names (the serving version, or a pinned one).
* **plan**: the request's validated fields -> model inputs (:class:`Inputs`): seeds -> latents,
  labels by one rule (``service.latents.labels_for``), truncation. A plan checks the queue has
  room before it draws any latent, so a refusal under a flood stays cheap.
* **submit**: through the model's batcher (``LoadedModel.batcher``: ``check_room``,
  ``enqueue``, ``withdraw``), with a deadline; resubmitted to the new version when a hot swap
  closed the batcher between lookup and submit; withdrawn when the client goes away.
* **encode**: an :class:`Output` says how images become bytes: on the inference worker right
  after the batch (small bodies), or on the encode pool (grids, JSON), off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batcher import BatcherClosed, DeadlineExceeded, Finish, QueueFull, Ticket
from .context import ServiceContext
from .errors import ServiceError, bad_input
from .latents import (
    interpolate,
    labels_for,
    latents_from_request,
    seed_latents,
    seeds_for,
    truncate,
)
from .manifest import DIRECTIONS, Manifest, valid_name
from .registry import LoadedModel, ReloadRefused
from .schemas import (
    GenerateRequest,
    InterpolateRequest,
    PngQuery,
    check_generate,
    check_interpolate,
)
from .text import CaptionError, load_vocabulary

WaitGone = Callable[[], Awaitable[None]]  # returns when the client has gone away
MAX_NAME_ECHO = 64  # longer names are cut in messages


# --- resolve -------------------------------------------------------------------------------


def _unknown(name: str) -> ServiceError:
    shown = name if len(name) <= MAX_NAME_ECHO else name[:MAX_NAME_ECHO] + "..."
    return ServiceError("model_not_found", f"unknown model {shown!r}", "name")


def serving(ctx: ServiceContext, name: str) -> LoadedModel:
    """The serving version of ``name``; 503 while models are still loading, else 404."""
    model = ctx.registry.models.get(name)
    if model is not None:
        return model
    if ctx.registry.state == "loading" and valid_name(name):
        raise ServiceError("loading", "models are still loading")
    raise _unknown(name)


async def resolve(
    ctx: ServiceContext, name: str, version: int | None = None, may_load: bool = False
) -> LoadedModel:
    """The serving version, or ``version`` (loaded beside it only when ``may_load``)."""
    model = serving(ctx, name)
    if version is None or version == model.version:
        return model
    try:
        return await ctx.registry.get_version(name, version, may_load=may_load)
    except ReloadRefused as exc:
        raise ServiceError(exc.code, str(exc), "version", exc.retry_after) from None


# --- plan ----------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What the model is asked for: latents, labels, and the seeds they came from."""

    z: np.ndarray  # float32 [n, nz]
    labels: np.ndarray | None  # int64 [n], None for an unconditional model
    seeds: list[int] | None  # None when latents were given


def _check_n(ctx: ServiceContext, n: int, field: str = "n") -> None:
    limit = ctx.settings.max_images_per_request
    if not 1 <= n <= limit:
        raise bad_input(field, f"{n} images asked for; allowed 1..{limit}", "out_of_range")


def check_room(model: LoadedModel, n: int) -> None:
    """Refuse at once (503 queue_full) when the model's queue has no room for n more images."""
    try:
        model.batcher.check_room(n)
    except QueueFull as exc:
        raise ServiceError(
            "queue_full",
            f"too many images queued for {model.name}; retry later",
            retry_after=exc.retry_after,
        ) from None


def require_kind(model: LoadedModel, translates: bool, takes_text: bool = False) -> None:
    """Refuse (422 wrong_model_kind) a model the route cannot serve, naming the right route."""
    m = model.manifest
    if m.takes_text and not takes_text:
        message = (
            f"model {m.name} is {m.kind}: POST /v1/models/{m.name}/generate with a 'text' caption"
        )
        raise ServiceError("wrong_model_kind", message, "name")
    if m.translates == translates:
        return
    if m.translates:
        message = f"model {m.name} is {m.kind}: send images to POST /v1/models/{m.name}/translate"
    else:
        message = f"model {m.name} is {m.kind}: use /v1/models/{m.name}/generate, not translate"
    raise ServiceError("wrong_model_kind", message, "name")


def plan_translate(
    ctx: ServiceContext, model: LoadedModel, sources: list[np.ndarray], direction: str
) -> Inputs:
    """``POST .../translate``: decoded uint8 [S, S, C] images and one direction for all ->
    the graph's ``source`` [n, S, S, C] and ``direction`` [n] (carried as ``z`` and labels)."""
    require_kind(model, translates=True)
    if direction not in DIRECTIONS:
        raise bad_input("direction", f"direction must be one of {list(DIRECTIONS)}")
    _check_n(ctx, len(sources), "images")
    check_room(model, len(sources))
    batch = np.ascontiguousarray(np.stack(sources), dtype=np.uint8)
    index = np.full(len(sources), DIRECTIONS.index(direction), np.int64)
    return Inputs(batch, index, None)


def caption_tokens(model: LoadedModel, text: str | list[str], n: int) -> np.ndarray:
    """A text-to-image model's captions -> token ids int64 [n, L], by the vocabulary file
    shipped beside it; one caption serves all n images."""
    m = model.manifest
    assert m.text is not None
    side = {s.file: s.sha256 for s in m.side_files}
    vocab = load_vocabulary(model.directory, side.get(m.text.vocabulary, ""))
    captions = [text] if isinstance(text, str) else list(text)
    if len(captions) not in (1, n):
        raise bad_input("text", f"give one caption for all images or exactly n={n}")
    try:
        ids = vocab.encode_many(captions)
    except CaptionError as exc:
        if exc.unknown:
            words = f"{exc}; the known words are listed by GET /v1/models/{m.name}"
            raise ServiceError("unknown_words", words, "text") from None
        raise bad_input("text", str(exc)) from None
    return np.repeat(ids, n, axis=0) if len(captions) == 1 else ids


def _text_or_labels(m: Manifest, model: LoadedModel, body: GenerateRequest, n: int) -> Any:
    """A text-to-image model's token ids, or another model's labels (which take no text)."""
    if not m.takes_text:
        if body.text is not None:
            raise bad_input("text", f"model {m.name} is {m.kind} and takes no text")
        return None
    if body.text is None:
        raise bad_input(
            "text",
            f"model {m.name} is {m.kind}: give a caption in 'text' (GET /v1/models/{m.name})",
        )
    if body.labels is not None:
        raise bad_input("labels", f"model {m.name} takes its digit from the caption, not labels")
    return caption_tokens(model, body.text, n)


def plan_image_tensors(
    ctx: ServiceContext, model: LoadedModel, source: np.ndarray, direction: np.ndarray | None
) -> Inputs:
    """Given tensors (``/v2``) for an image-to-image model: source uint8 [n, S, S, C] at the
    model's size and mode, direction int64 [n] of 0 (A->B) or 1 (B->A)."""
    require_kind(model, translates=True)
    m = model.manifest
    want = [m.image_size, m.image_size, m.channels]
    if source.ndim != 4 or list(source.shape[1:]) != want:
        raise bad_input(
            "source", f"input 'source' must have shape [n, {', '.join(map(str, want))}]"
        )
    n = source.shape[0]
    _check_n(ctx, n, "source")
    if direction is None or direction.shape != (n,):
        raise bad_input("direction", f"input 'direction' must have shape [{n}]")
    if ((direction != 0) & (direction != 1)).any():
        raise bad_input("direction", "input 'direction' must hold 0 (A->B) or 1 (B->A)")
    check_room(model, n)
    return Inputs(
        np.ascontiguousarray(source, np.uint8), np.ascontiguousarray(direction, np.int64), None
    )


def plan_generate(ctx: ServiceContext, model: LoadedModel, body: GenerateRequest) -> Inputs:
    """``POST .../generate``: cross-field and per-model checks, then latents and labels (or
    a text-to-image model's caption tokens)."""
    require_kind(model, translates=False, takes_text=True)
    m = model.manifest
    check_generate(body)
    n = body.count
    _check_n(ctx, n, "latents" if body.latents is not None else "seeds" if body.seeds else "n")
    tokens = _text_or_labels(m, model, body, n)
    seeds: list[int] | None
    z: np.ndarray | None = None
    if body.latents is not None:
        seeds = None
        z = latents_from_request(body.latents, m.nz, "latents")
    else:
        seeds = list(body.seeds) if body.seeds is not None else seeds_for(body.seed, n)
    labels = tokens if tokens is not None else labels_for(m, body.labels, n, seeds)
    check_room(model, n)
    if z is None:
        z = seed_latents(seeds, m, body.truncation)
    return Inputs(truncate(z, body.truncation, m), labels, seeds)


def plan_png(ctx: ServiceContext, model: LoadedModel, query: PngQuery) -> Inputs:
    """``GET .../generate``: n images from seed, seed+1, ... with one label for all."""
    require_kind(model, translates=False)
    m = model.manifest
    _check_n(ctx, query.n)
    seeds = seeds_for(query.seed, query.n)
    labels = labels_for(m, query.label, query.n, seeds, "label")
    check_room(model, query.n)
    z = seed_latents(seeds, m, query.truncation)
    return Inputs(truncate(z, query.truncation, m), labels, seeds)


def png_etag(ctx: ServiceContext, model: LoadedModel, query: PngQuery) -> str | None:
    """The ETag of a seeded ``GET .../generate``: the same query on the same artifact gives the
    same bytes. None without a seed (a random image)."""
    require_kind(model, translates=False)
    m = model.manifest
    _check_n(ctx, query.n)
    given = labels_for(m, query.label, 1, None, "label") if query.label is not None else None
    if query.seed is None:
        return None
    label = int(given[0]) if given is not None else None
    key = json.dumps(
        [
            m.name,
            m.version,
            m.artifact.sha256,
            query.seed,
            label,
            query.n,
            query.truncation,
            query.columns,
            ctx.settings.png_compress_level,
        ]
    )
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def plan_interpolate(ctx: ServiceContext, model: LoadedModel, body: InterpolateRequest) -> Inputs:
    """A lerp/slerp walk between two seeds' or two given latents, both ends included."""
    require_kind(model, translates=False)
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
        first_seed = 0
    label = body.label
    if label is None and m.conditional:
        label = first_seed % m.num_classes  # the balanced rule, for the walk's first seed
    labels = labels_for(m, label, body.steps, None, "label")
    check_room(model, body.steps)
    z = truncate(interpolate(ends[0], ends[1], body.steps, body.method), body.truncation, m)
    return Inputs(z, labels, list(body.seeds) if body.seeds else None)


def _given_batch(ctx: ServiceContext, m: Manifest, z: np.ndarray) -> int:
    """Check latents a ``/v2`` caller gives: [n, nz], n within the request limit, finite."""
    if z.ndim != 2 or z.shape[1] != m.nz:
        raise bad_input("z", f"input 'z' must have shape [n, {m.nz}], got {list(z.shape)}")
    n = z.shape[0]
    if not 1 <= n <= ctx.settings.max_images_per_request:
        limit = ctx.settings.max_images_per_request
        raise bad_input("z", f"input 'z' has batch size {n}; allowed 1..{limit}", "out_of_range")
    if not np.isfinite(z).all():
        raise bad_input("z", "input 'z' must hold finite numbers")
    return n


def plan_tensors(
    ctx: ServiceContext, model: LoadedModel, z: np.ndarray, labels: np.ndarray | None
) -> Inputs:
    """Given tensors (``/v2``): z float32 [n, nz], labels int64 [n] class indices."""
    require_kind(model, translates=False)
    m = model.manifest
    n = _given_batch(ctx, m, z)
    if labels is not None and not m.conditional:
        raise bad_input("label", f"model {m.name} is unconditional and takes no label")
    if labels is None and m.conditional:
        raise bad_input("label", "missing input 'label'")
    if labels is not None:
        if labels.shape != (n,):
            raise bad_input(
                "label",
                f"input 'label' must have shape [{n}] to match 'z', got {list(labels.shape)}",
            )
        bad = labels[(labels < 0) | (labels >= m.num_classes)]
        if bad.size:
            raise bad_input(
                "label",
                f"input 'label' has {int(bad[0])}; must be 0..{m.num_classes - 1}",
                "unknown_label",
            )
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    check_room(model, n)
    return Inputs(np.ascontiguousarray(z, dtype=np.float32), labels, None)


def plan_text_tensors(
    ctx: ServiceContext, model: LoadedModel, z: np.ndarray, captions: list[str]
) -> Inputs:
    """Given latents and captions (``/v2``): z float32 [n, nz], one caption or n."""
    m = model.manifest
    n = _given_batch(ctx, m, z)
    tokens = caption_tokens(model, captions, n)
    check_room(model, n)
    return Inputs(np.ascontiguousarray(z, dtype=np.float32), tokens, None)


def deadline(ctx: ServiceContext, timeout_s: float | None = None) -> float:
    """A ``time.monotonic()`` instant: the request's own timeout, else the default."""
    return time.monotonic() + (ctx.settings.request_timeout_s if timeout_s is None else timeout_s)


# --- submit --------------------------------------------------------------------------------


async def submit(
    ctx: ServiceContext,
    name: str,
    version: int | None,
    model: LoadedModel,
    inputs: Inputs,
    until: float,
    gone: WaitGone | None = None,
    finish: Finish | None = None,
) -> tuple[LoadedModel, Any]:
    """Queue ``inputs`` on the model's batcher -> (the version that served, images or
    ``finish(images)``). A hot swap between lookup and submit resubmits to the new version;
    the client leaving withdraws the work (499)."""
    for _ in range(3):
        try:
            ticket = model.batcher.enqueue(inputs.z, inputs.labels, until, finish)
            return model, await _unless_gone(model, ticket, gone)
        except BatcherClosed:  # swapped out (or evicted) between lookup and submit
            newer = await _successor(ctx, name, version, model)
            if newer is None:
                break
            model = newer
        except QueueFull as exc:
            raise ServiceError(
                "queue_full",
                f"too many images queued for {name}; retry later",
                retry_after=exc.retry_after,
            ) from None
        except DeadlineExceeded:
            raise ServiceError(
                "deadline_exceeded", "deadline passed while queued", "timeout_ms"
            ) from None
    raise ServiceError("model_unavailable", f"{name} is being replaced; retry")


async def _successor(
    ctx: ServiceContext, name: str, version: int | None, model: LoadedModel
) -> LoadedModel | None:
    """The version that replaced ``model``, if it takes the same inputs."""
    if version is None:
        newer = ctx.registry.models.get(name)
    else:
        try:
            newer = await ctx.registry.get_version(name, version, may_load=False)
        except (KeyError, ReloadRefused):
            newer = None
    if newer is None or newer is model:
        return None
    ma, mb = newer.manifest, model.manifest
    same = [s.layout() for s in ma.inputs] == [s.layout() for s in mb.inputs]
    return newer if same else None


async def _unless_gone(model: LoadedModel, ticket: Ticket, gone: WaitGone | None) -> Any:
    """Wait for a queued request; if the client goes away first, withdraw it (499)."""
    future = ticket.future
    if gone is None:
        try:
            return await future
        except asyncio.CancelledError:
            model.batcher.withdraw(ticket)
            raise
    watcher = asyncio.ensure_future(gone())

    def client_left(_: asyncio.Future) -> None:
        future.cancel()  # no-op once the result is in

    watcher.add_done_callback(client_left)
    try:
        return await future
    except asyncio.CancelledError:
        model.batcher.withdraw(ticket)
        if watcher.done() and not watcher.cancelled():
            raise ServiceError("client_gone", "client disconnected") from None
        raise
    finally:
        watcher.remove_done_callback(client_left)
        watcher.cancel()


# --- encode --------------------------------------------------------------------------------


def timed(ctx: ServiceContext, fmt: str, fn: Callable[..., bytes]) -> Callable[..., bytes]:
    """``fn`` timed into the encode histogram (by format)."""
    histogram = ctx.metrics.encode_duration.labels(format=fmt)

    def run(*args: Any) -> bytes:
        started = time.perf_counter()
        body = fn(*args)
        histogram.observe(time.perf_counter() - started)
        return body

    return run


@dataclass
class Output:
    """How images become the answer's bytes: ``on_worker(images)`` right after the batch, on
    the inference worker (no second hop for small bodies), or ``off_loop(model, images)`` on
    the encode pool once the images are back."""

    media_type: str
    on_worker: Finish | None = None
    off_loop: Callable[[LoadedModel, np.ndarray], bytes] | None = None


async def generate(
    ctx: ServiceContext,
    name: str,
    version: int | None,
    model: LoadedModel,
    inputs: Inputs,
    output: Output,
    until: float,
    gone: WaitGone | None = None,
) -> tuple[LoadedModel, bytes]:
    """submit, then encode: -> (the version that served, the body)."""
    model, result = await submit(ctx, name, version, model, inputs, until, gone, output.on_worker)
    if output.off_loop is None:
        return model, result
    encode = output.off_loop
    body = await asyncio.get_running_loop().run_in_executor(ctx.encode_pool, encode, model, result)
    return model, body


# --- refusals ------------------------------------------------------------------------------

MODEL_IN_PATH = re.compile(r"^/v[12]/models/([^/]+)")


def count_refusal(ctx: ServiceContext, path: str, exc: ServiceError) -> None:
    """Count ``exc`` under its table reason, labelled by the model the path names (one shared
    label for names that are not served models)."""
    reason = exc.rule.reason
    if reason is not None:
        match = MODEL_IN_PATH.match(path)
        model = ctx.registry.metric_label(match.group(1)) if match else ""
        ctx.metrics.refuse(model, reason)
