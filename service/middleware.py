"""Pure ASGI middleware: request metrics, in-flight count, body-size limit, drain refusals.

Pure ASGI (not BaseHTTPMiddleware) so the app's ``receive`` still reports client disconnects.
"""

from __future__ import annotations

import json
import logging
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import ServiceContext
from .errors import error_response
from .fastpath import GENERATE_GET, GENERATE_GET_ROUTE, serve_generate_get, serve_generate_post
from .lifecycle import Lifecycle
from .metrics import ServiceMetrics

log = logging.getLogger("gan_serve.errors")

UNTRACKED = {"/healthz", "/readyz", "/metrics"}
MODEL_IN_PATH = re.compile(r"^/v1/models/([^/]+)/")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class ServiceMiddleware:
    """The one service layer in front of the router; with ``context`` it also serves the hot
    ``GET .../generate`` route itself (service/fastpath.py)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        lifecycle: Lifecycle,
        max_body_bytes: int,
        context: ServiceContext | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.max_body = max_body_bytes
        self.context = context
        # Label children are looked up once, not per request (prometheus_client's labels()
        # takes a lock and builds a key each time).
        self._counted: dict[tuple[str, str, str], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path in UNTRACKED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        label: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.lifecycle.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            if self.lifecycle.draining:
                self.metrics.refuse(_model(path), "draining")
                await _send_json(
                    send_wrapper,
                    503,
                    {"error": {"code": "draining", "message": "shutting down", "field": None}},
                    {"retry-after": "1", "connection": "close"},
                )
                return
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                self.metrics.refuse(_model(path), "bad_request")
                await _send_json(
                    send_wrapper,
                    413,
                    {
                        "error": {
                            "code": "body_too_large",
                            "message": f"request body exceeds {self.max_body} bytes",
                            "field": "body",
                        }
                    },
                )
                return
            if self.context is not None and not scope.get("root_path"):
                match = GENERATE_GET.match(path)
                if match is not None and method in ("GET", "POST"):
                    label = GENERATE_GET_ROUTE
                    if method == "GET":
                        if await self._fast(match.group(1), scope, receive, send_wrapper):
                            return
                    else:
                        receive = await self._fast_post(
                            match.group(1), scope, receive, send_wrapper
                        )
                        if receive is None:
                            return
                    label = None
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            self.lifecycle.in_flight -= 1
            self.metrics.in_flight.dec()
            if label is None:
                label = getattr(scope.get("route"), "path", None) or "unmatched"
            key = (label, method, status)
            children = self._counted.get(key)
            if children is None:
                children = self._counted[key] = (
                    self.metrics.requests.labels(route=label, method=method, status=str(status)),
                    self.metrics.request_duration.labels(route=label),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)

    async def _fast(self, name: str, scope: Scope, receive: Receive, send: Send) -> bool:
        """The lean generate path; an unexpected error gets the same JSON 500 as FastAPI's
        handler gives (this layer sits outside FastAPI's error middleware), then propagates."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            return await serve_generate_get(self.context, name, scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if not started:
                await error_response(500, "internal", "internal error")(scope, receive, send)
            raise

    async def _fast_post(
        self, name: str, scope: Scope, receive: Receive, send: Send
    ) -> Receive | None:
        """The lean POST path: None when it answered, else the receive for the route."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            return await serve_generate_post(
                self.context, name, scope, receive, tracking_send, self.max_body
            )
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if not started:
                await error_response(500, "internal", "internal error")(scope, receive, send)
            raise

    def _limited(self, receive: Receive) -> Receive:
        """Count streamed body bytes too (chunked uploads have no Content-Length)."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


def _model(path: str) -> str:
    match = MODEL_IN_PATH.match(path)
    return match.group(1) if match else ""


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(
    send: Send, status: int, body: dict, headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
