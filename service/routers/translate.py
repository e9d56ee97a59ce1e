"""``POST /v1/models/{name}/translate``: images through an image-to-image model.

The body is one of:

* a raw PNG or JPEG (``Content-Type: image/png`` or ``image/jpeg``): one image;
* ``multipart/form-data``: every file part is an image, in order; plain fields may carry
  ``direction``, ``format`` and ``columns``;
* JSON: ``{"images": [...], "direction": "A->B", "format": "png", "columns": 4}``, each image a
  ``data:image/png;base64,...`` (or jpeg) URL or a nested list of integers 0-255 ([H, W] or
  [H, W, C]).

``direction`` (``A->B`` by default, or ``B->A``), ``format`` and ``columns`` may also be
query parameters (body fields win). Answers are like generate's: ``png`` (one image: a PNG;
several: a JSON list of base64 PNGs), ``grid`` (one PNG), ``npy`` (uint8 [n, S, S, C]) or
``json`` (``{"model", "version", "direction", "images": [{"png"}]}``).

The route goes through the generation pipeline (resolve -> plan -> submit -> encode): the
plan step decodes and converts the images (service/image_input.py) and the model's batcher
runs them with the direction as its second input, batched with other requests.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from .. import encode, image_input
from ..context import ServiceContext, context
from ..errors import ERROR_RESPONSES, ServiceError, bad_input
from ..manifest import DIRECTIONS
from ..pipeline import (
    Output,
    WaitGone,
    check_room,
    deadline,
    generate,
    plan_translate,
    require_kind,
    resolve,
    timed,
)
from ..registry import LoadedModel
from .generate import JSON, NPY, PNG, ReadBody, waiter

router = APIRouter(tags=["translate"], responses=ERROR_RESPONSES)

FORMATS = ("png", "grid", "npy", "json")
DIRECTION_ALIASES = {"A->B": "A->B", "B->A": "B->A", "a2b": "A->B", "b2a": "B->A"}


def _direction(value: Any) -> str:
    if not isinstance(value, str) or value not in DIRECTION_ALIASES:
        raise bad_input("direction", f"direction must be one of {list(DIRECTIONS)}")
    return DIRECTION_ALIASES[value]


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise bad_input("format", f"format must be one of {list(FORMATS)}")
    return value


def _columns(value: Any) -> int | None:
    if value is None:
        return None
    try:
        columns = int(value)
    except (TypeError, ValueError):
        raise bad_input("columns", "columns must be an integer") from None
    if not 1 <= columns <= 64:
        raise bad_input("columns", "columns must be 1..64", "out_of_range")
    return columns


def read_images(
    ctx: ServiceContext, model: LoadedModel, content_type: str | None, body: bytes
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The request's images, converted to the model's size and mode, and its body fields."""
    m = model.manifest
    size, channels, limit = m.image_size, m.channels, ctx.settings.max_input_pixels
    media = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise ServiceError("missing_body", "send an image (PNG/JPEG, multipart or JSON)", "body")
    if media in image_input.IMAGE_TYPES:
        return [image_input.decode(body, size, channels, limit, "body")], {}
    if media == "multipart/form-data":
        files, fields = image_input.multipart_files(content_type or "", body)
        if not files:
            raise bad_input("images", "the multipart body holds no file part")
        _check_count(ctx, len(files))
        images = [
            image_input.decode(data, size, channels, limit, f"images[{i}]")
            for i, data in enumerate(files)
        ]
        return images, fields
    if media == "application/json":
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServiceError("malformed_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("images"), list):
            raise bad_input("images", 'the JSON body must be {"images": [...]} with a list')
        items = document["images"]
        if not items:
            raise bad_input("images", "images is empty")
        _check_count(ctx, len(items))
        images = []
        for i, item in enumerate(items):
            field = f"images[{i}]"
            if isinstance(item, str):
                images.append(image_input.from_data_url(item, size, channels, limit, field))
            elif isinstance(item, list):
                images.append(image_input.from_array(item, size, channels, limit, field))
            else:
                raise bad_input(field, "an image is a data URL string or a nested list 0-255")
        return images, {k: v for k, v in document.items() if k != "images"}
    raise ServiceError(
        "unsupported_media_type",
        "send image/png, image/jpeg, multipart/form-data or application/json",
        "content-type",
    )


def _check_count(ctx: ServiceContext, n: int) -> None:
    limit = ctx.settings.max_images_per_request
    if n > limit:
        raise bad_input("images", f"{n} images sent; allowed 1..{limit}", "out_of_range")


def _output(ctx: ServiceContext, fmt: str, columns: int | None, n: int, direction: str) -> Output:
    level = ctx.settings.png_compress_level
    if fmt == "npy":
        return Output(NPY, on_worker=timed(ctx, "npy", encode.npy_bytes))
    if fmt == "png" and n == 1:
        return Output(PNG, on_worker=timed(ctx, "png", lambda im: encode.png_bytes(im[0], level)))
    if fmt == "png":
        pngs = timed(ctx, "png", lambda _, im: json.dumps(encode.base64_pngs(im, level)).encode())
        return Output(JSON, off_loop=pngs)
    if fmt == "grid":
        grid = timed(ctx, "grid", lambda _, im: encode.grid_png(im, columns, level))
        return Output(PNG, off_loop=grid)

    def as_json(model: LoadedModel, images: np.ndarray) -> bytes:
        items = [{"png": png} for png in encode.base64_pngs(images, level)]
        document = {
            "model": model.name,
            "version": model.version,
            "direction": direction,
            "images": items,
        }
        return json.dumps(document).encode()

    return Output(JSON, off_loop=timed(ctx, "json", as_json))


async def answer_translate(
    ctx: ServiceContext,
    name: str,
    content_type: str | None,
    query: dict[str, str],
    read_body: ReadBody,
    gone: WaitGone,
) -> Response:
    """Resolve, refuse early (wrong kind, full queue), then decode, plan, submit, encode."""
    model = await resolve(ctx, name)
    require_kind(model, translates=True)
    check_room(model, 1)  # before reading and decoding the body
    images, fields = read_images(ctx, model, content_type, await read_body())
    merged = {**query, **{k: v for k, v in fields.items() if v is not None}}
    direction = _direction(merged.get("direction", DIRECTIONS[0]))
    fmt = _format(merged.get("format", "png"))
    columns = _columns(merged.get("columns"))
    inputs = plan_translate(ctx, model, images, direction)
    output = _output(ctx, fmt, columns, len(images), direction)
    model, content = await generate(ctx, name, None, model, inputs, output, deadline(ctx), gone)
    headers = {
        "X-Model-Name": model.name,
        "X-Model-Version": str(model.version),
        "X-Provider": model.provider,
        "X-Direction": direction,
    }
    return Response(content, media_type=output.media_type, headers=headers)


TRANSLATED = {
    200: {"content": {PNG: {}, NPY: {}, JSON: {}}, "description": "The translated images"}
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "direction": {"type": "string", "enum": list(DIRECTIONS)},
                        "format": {"type": "string", "enum": list(FORMATS)},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "minItems": 1},
                        "direction": {"type": "string", "enum": list(DIRECTIONS)},
                        "format": {"type": "string", "enum": list(FORMATS)},
                        "columns": {"type": "integer", "minimum": 1, "maximum": 64},
                    },
                }
            },
        },
    },
    "parameters": [
        {
            "name": "direction",
            "in": "query",
            "schema": {"type": "string", "enum": list(DIRECTIONS)},
        },
        {"name": "format", "in": "query", "schema": {"type": "string", "enum": list(FORMATS)}},
        {
            "name": "columns",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 64},
        },
    ],
}


@router.post(
    "/v1/models/{name}/translate",
    summary="Translate images (PNG/JPEG, multipart or JSON) with an image-to-image model",
    responses=TRANSLATED,
    openapi_extra=REQUEST_BODY,
    response_class=Response,
)
async def translate(request: Request, name: str) -> Response:
    return await answer_translate(
        context(request),
        name,
        request.headers.get("content-type"),
        dict(request.query_params),
        request.body,
        waiter(request.receive),
    )
