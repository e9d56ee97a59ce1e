"""The hot routes, ``GET`` and ``POST /v1/models/{name}/generate``, answered without FastAPI's
per-request work.

FastAPI spends most of a small request's time on routing, dependency solving, query
validation and its middleware layers (docs/BENCHMARKS.md). This path parses the plain,
valid queries itself and answers through the same functions as the documented route
(``plan_png``, ``respond_png``), so the bytes, headers, ETag/304 and metrics are the same.
Anything it does not recognise as plainly valid (an unknown model, a value out of range or
written unusually, a repeated parameter, a label the model does not know) goes on to the
FastAPI route, which answers with its own validation errors. The route stays declared for
the OpenAPI schema; tests check that both give the same answers.

POST: a small JSON body (``Content-Type: application/json`` with a Content-Length) is read
here, parsed with ``json.loads`` and validated by the same pydantic model as the route;
when anything is off, the route gets a ``receive`` that replays the body already read.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .context import ServiceContext
from .errors import ApiError, error_response
from .manifest import MAX_SEED
from .routers.generate import (
    Overloaded,
    PngPlan,
    PngQuery,
    plan_generate,
    plan_png,
    respond_generate,
    respond_png,
)
from .schemas import GenerateRequest

GENERATE_GET = re.compile(r"^/v1/models/([^/]+)/generate$")
GENERATE_GET_ROUTE = "/v1/models/{name}/generate"  # the metrics label, as FastAPI names it
FAST_BODY_BYTES = 64 * 1024  # larger bodies (explicit latents, long seed lists) take the route

_DIGITS = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[0-9]{1,3}(\.[0-9]{1,17})?")
_KNOWN = frozenset(("seed", "label", "n", "truncation", "columns"))
MAX_LABEL_CHARS = 64  # as the route's Query(max_length=64)


def parse_png_query(query_string: bytes) -> PngQuery | None:
    """The query of ``GET .../generate`` when every known parameter is plainly valid, else None.

    Decoded as Starlette does (latin-1, then percent-decoding as UTF-8); unknown parameters are
    ignored, as by the route.
    """
    if not query_string:
        return PngQuery()
    values: dict[str, str] = {}
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
    else:  # nothing to unquote: parse_qsl's split, without its per-item unquoting
        pairs = [part.partition("=")[::2] for part in text.split("&") if part]
    for key, value in pairs:
        if key in _KNOWN:
            if key in values:
                return None
            values[key] = value
    query = PngQuery()
    if "seed" in values:
        seed = _int(values["seed"], 0, MAX_SEED)
        if seed is None:
            return None
        query.seed = seed
    if "n" in values:
        n = _int(values["n"], 1, 1 << 31)
        if n is None:
            return None
        query.n = n
    if "columns" in values:
        columns = _int(values["columns"], 1, 256)
        if columns is None:
            return None
        query.columns = columns
    if "truncation" in values:
        text = values["truncation"]
        if not _DECIMAL.fullmatch(text):
            return None
        psi = float(text)
        if not 0.0 <= psi <= 1.0:
            return None
        query.truncation = psi
    if "label" in values:
        if len(values["label"]) > MAX_LABEL_CHARS:
            return None
        query.label = values["label"]
    return query


def _int(text: str, low: int, high: int) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def serve_generate_get(
    ctx: ServiceContext, name: str, scope: Scope, receive: Receive, send: Send
) -> bool:
    """Answer ``GET /v1/models/{name}/generate``; False (nothing sent) when the route should."""
    query = parse_png_query(scope.get("query_string", b""))
    if query is None:
        return False
    model = ctx.registry.models.get(name)
    if model is None:
        return False
    try:
        plan: PngPlan | Response = plan_png(ctx, model, query, _header(scope, b"if-none-match"))
    except Overloaded as exc:  # refused before any work; the route would refuse again
        plan = _error(exc)
    except ApiError:
        return False  # the route raises the same error, counted by its handler
    if isinstance(plan, Response):
        response = plan
    else:
        try:
            response = await respond_png(ctx, receive, name, None, model, plan)
        except ApiError as exc:  # overload, deadline, client gone: after submitting
            if 400 <= exc.status < 500 and exc.status != 499:
                ctx.metrics.refuse(name, "bad_request")
            response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    await response(scope, receive, send)
    return True


async def serve_generate_post(
    ctx: ServiceContext,
    name: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    max_body: int,
) -> Receive | None:
    """Answer ``POST /v1/models/{name}/generate``: None when answered, else the ``receive`` the
    route must use (it replays whatever body was read here)."""
    length = _header(scope, b"content-length")
    if (
        _header(scope, b"content-type") != "application/json"
        or length is None
        or not length.isdigit()
        or not 0 < int(length) <= min(FAST_BODY_BYTES, max_body)
    ):
        return receive
    read: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return _replay(read, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if len(body) != int(length):
        return _replay(read, receive)
    try:
        document = json.loads(body)
        if not isinstance(document, dict):
            return _replay(read, receive)
        request = GenerateRequest.model_validate(document)
    except (ValueError, RecursionError, ValidationError):  # bad JSON: the route says why
        return _replay(read, receive)
    model = ctx.registry.models.get(name)
    if model is None:
        return _replay(read, receive)
    try:
        plan = plan_generate(ctx, model, request)
    except Overloaded as exc:  # refused before any work; the route would refuse again
        await _error(exc)(scope, receive, send)
        return None
    except ApiError:
        return _replay(read, receive)  # the route raises the same error, counted by its handler
    try:
        response = await respond_generate(ctx, receive, name, None, model, plan)
    except ApiError as exc:  # overload, deadline, client gone: after submitting
        if 400 <= exc.status < 500 and exc.status != 499:
            ctx.metrics.refuse(name, "bad_request")
        response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    await response(scope, receive, send)
    return None


def _error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


def _replay(read: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives back the messages already read, then the client's own."""
    pending = list(read)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
