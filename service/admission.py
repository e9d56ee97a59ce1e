"""Refusals decided from a request's head alone, answered by the HTTP protocol itself.

Under a flood of requests that will be refused anyway (the model's queue is full, or the
service is draining), each refusal must cost as little as possible, or answering them starves
the batches that complete the accepted requests. :func:`make_admission` gives the protocol
(service/http_protocol.py) a check it runs when a request head is complete: the refusal is
written as bytes before any ASGI task, routing, body read or validation. It goes through the
same error table and refusal metrics as every other answer.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from .batcher import QueueFull
from .context import ServiceContext
from .errors import ServiceError, render
from .http_protocol import Admission, canned_response
from .pipeline import count_refusal

# The routes that queue images, with the route label the request metrics use for each.
HOT_ROUTES = (
    (re.compile(r"^/v1/models/([^/]+)/generate$"), "/v1/models/{name}/generate"),
    (re.compile(r"^/v2/models/([^/]+)/infer$"), "/v2/models/{name}/infer"),
)


def _hot_route(path: str) -> tuple[re.Match | None, str]:
    for pattern, route in HOT_ROUTES:
        match = pattern.match(path)
        if match is not None:
            return match, route
    return None, ""


def make_admission(ctx: ServiceContext) -> Admission:
    """``(method, path) -> bytes | None``: a whole 503 response, or None to serve."""
    requests = ctx.metrics.requests

    def admission(method: str, path: str) -> bytes | None:
        if method not in ("GET", "POST"):
            return None
        match, route = _hot_route(path)
        if match is None:
            return None
        if ctx.lifecycle.draining:
            refusal = ServiceError("draining", "shutting down")
        else:
            model = ctx.registry.models.get(match.group(1))
            if model is None:
                return None  # unknown or still loading: the route says which
            try:
                model.batcher.check_room(1)  # counts queue_full itself when it refuses
                return None
            except QueueFull as exc:
                refusal = ServiceError(
                    "queue_full",
                    f"too many images queued for {model.name}; retry later",
                    retry_after=exc.retry_after,
                )
        count_refusal(ctx, path, refusal)
        status, headers, body = render(refusal, path)
        if refusal.code == "draining":
            headers["connection"] = "close"
        requests.labels(route=route, method=method, status=str(status)).inc()
        return canned_response(status, HTTPStatus(status).phrase, body, headers)

    return admission
