"""The lean path: ``GET`` and ``POST /v1/models/{name}/generate`` answered without FastAPI's
per-request work (routing, dependency solving, its middleware layers; docs/BENCHMARKS.md).

It is not a second implementation: it calls the routes' own ``answer_png`` and
``answer_generate`` (service/routers/generate.py), which validate through the same models and
go through the same pipeline, so answers, headers, errors and metrics are the same. The
FastAPI routes stay declared for the OpenAPI schema and serve when the lean path is off.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import ServiceContext
from .errors import ServiceError, error_response
from .pipeline import count_refusal
from .routers.generate import answer_generate, answer_png, waiter

log = logging.getLogger("gan_serve.errors")

GENERATE = re.compile(r"^/v1/models/([^/]+)/generate$")


class LeanRoute:
    """What ``scope["route"]`` holds for a lean answer: the route label the metrics use."""

    path = "/v1/models/{name}/generate"


LEAN_ROUTE = LeanRoute()


def query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    """Decoded as Starlette does: latin-1, then percent-decoding as UTF-8."""
    if not query_string:
        return []
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True)
    # Nothing to unquote: parse_qsl's split, without its per-item unquoting.
    return [tuple(part.partition("=")[::2]) for part in text.split("&") if part]  # type: ignore[misc]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def body_reader(receive: Receive):  # noqa: ANN201
    """Read the whole request body from ``receive`` (its size is bounded by the guard)."""

    async def read() -> bytes:
        chunks: list[bytes] = []
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise ServiceError("client_gone", "client disconnected")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    return read


class LeanRoutes:
    """ASGI app in front of FastAPI that answers the two hot routes itself."""

    def __init__(self, app: ASGIApp, ctx: ServiceContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        match = GENERATE.match(scope["path"]) if method in ("GET", "POST") else None
        if match is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = LEAN_ROUTE
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        name = match.group(1)
        try:
            try:
                if method == "GET":
                    response = await answer_png(
                        self.ctx,
                        name,
                        None,
                        query_pairs(scope.get("query_string", b"")),
                        _header(scope, b"if-none-match"),
                        waiter(receive),
                    )
                else:
                    response = await answer_generate(
                        self.ctx,
                        name,
                        None,
                        _header(scope, b"content-type"),
                        body_reader(receive),
                        waiter(receive),
                    )
            except ServiceError as exc:
                count_refusal(self.ctx, scope["path"], exc)
                response = error_response(exc, scope["path"])
            await response(scope, receive, tracking_send)
        except Exception:
            # This layer sits outside FastAPI's error middleware: answer as its handler would.
            log.exception("unhandled error on %s", scope["path"])
            if not started:
                internal = ServiceError("internal", "internal error")
                await error_response(internal, scope["path"])(scope, receive, send)
            raise
