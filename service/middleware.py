"""The guard layer in front of every route: request metrics, the in-flight cap, the body-size
limit and drain refusals. It knows no route: refusals are rendered through the error table
(service/errors.py) in the shape of the door the path belongs to.

Pure ASGI (not BaseHTTPMiddleware) so the app's ``receive`` still reports client disconnects.
Every refusal here is decided from the request head alone, before any body is read, so a
flood of refused requests costs the event loop as little as possible.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ServiceError, render
from .lifecycle import Lifecycle
from .metrics import ServiceMetrics

UNTRACKED = {"/healthz", "/readyz", "/metrics"}
CLOSE = (b"connection", b"close")
OnRefusal = Callable[[str, ServiceError], None]  # (path, error): counts the refusal


class BodyTooLarge(ServiceError):
    def __init__(self, limit: int) -> None:
        super().__init__("body_too_large", f"request body exceeds {limit} bytes", "body")


class ServiceMiddleware:
    """The one guard layer in front of the routes (and the lean path)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        lifecycle: Lifecycle,
        max_body_bytes: int,
        max_in_flight: int,
        on_refusal: OnRefusal,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.max_body = max_body_bytes
        self.max_in_flight = max_in_flight
        self.on_refusal = on_refusal
        # Label children are looked up once, not per request (prometheus_client's labels()
        # takes a lock and builds a key each time).
        self._counted: dict[tuple[str, str, int], tuple] = {}

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
        answered = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                if self.lifecycle.draining:  # no further request on a closing connection
                    message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        self.lifecycle.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._refuse(path, refusal, send_wrapper)
                return
            try:
                await self.app(scope, self._limited(receive), send_wrapper)
            except BodyTooLarge as exc:  # raised by a reader that did not catch it
                if answered:
                    raise
                await self._refuse(path, exc, send_wrapper)
        finally:
            self.lifecycle.in_flight -= 1
            self.metrics.in_flight.dec()
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

    def _refusal(self, scope: Scope) -> ServiceError | None:
        """The refusal the request head alone earns: draining, too busy, or too large."""
        if self.lifecycle.draining:
            return ServiceError("draining", "shutting down")
        if self.lifecycle.in_flight > self.max_in_flight:
            return ServiceError("overloaded", "too many requests in flight; retry later")
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            return BodyTooLarge(self.max_body)
        return None

    async def _refuse(self, path: str, exc: ServiceError, send: Send) -> None:
        self.on_refusal(path, exc)
        status, headers, body = render(exc, path)  # draining: send adds Connection: close
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

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


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
