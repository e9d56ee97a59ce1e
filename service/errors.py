"""Domain errors and the one table that turns them into answers.

The pipeline and the registry raise :class:`ServiceError` with a ``code`` and no HTTP in it.
``RULES`` maps each code to its status, its refusal-metric reason and whether it carries
Retry-After; :func:`render` writes it in the shape of the front door the request came in by:

* ``/v1`` (and every other route): ``{"error": {"code", "message", "field"}}``;
* ``/v2`` (Open Inference Protocol): ``{"error": "<message>"}``; input errors are 400 there.

User mistakes are 4xx naming the offending field; overload is 503 with Retry-After; a
deadline is 504. Nothing a client sends may produce a 500.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

log = logging.getLogger("gan_serve.errors")


@dataclass(frozen=True)
class Rule:
    """How one error code is answered: v1 status, v2 status, refusal reason (None: not a
    refusal, or counted where it happens, e.g. by the batcher)."""

    status: int
    v2_status: int
    reason: str | None = "bad_request"


_INPUT = Rule(422, 400)
RULES: dict[str, Rule] = {
    # The request itself.
    "invalid_value": _INPUT,
    "out_of_range": _INPUT,
    "unknown_label": _INPUT,
    "unknown_words": _INPUT,  # a caption word outside a text-to-image model's vocabulary
    "malformed_json": Rule(400, 400),
    "missing_body": Rule(400, 400),
    "body_too_large": Rule(413, 413),
    "unsupported_media_type": Rule(415, 415),
    "header_too_large": Rule(431, 431),
    "image_too_large": Rule(413, 413),  # pixel count from the header, before decoding
    "broken_image": _INPUT,
    "wrong_model_kind": _INPUT,  # a noise-to-image route for an image-to-image model, or back
    # What it names.
    "model_not_found": Rule(404, 404),
    "version_not_found": Rule(404, 404),
    "version_not_loaded": Rule(404, 404),
    "not_found": Rule(404, 404, None),
    "method_not_allowed": Rule(405, 405, None),
    # Privileges.
    "unauthorized": Rule(401, 401, None),
    "forbidden": Rule(403, 403, None),
    "rate_limited": Rule(429, 429, None),
    # The service's state.
    "loading": Rule(503, 503, None),
    "queue_full": Rule(503, 503, None),  # counted by the batcher's check_room
    "overloaded": Rule(503, 503, "overloaded"),
    "draining": Rule(503, 503, "draining"),
    "model_unavailable": Rule(503, 503, None),
    "deadline_exceeded": Rule(504, 504, None),  # counted by the batcher
    "client_gone": Rule(499, 499, None),  # counted by the batcher
    # Loading a version.
    "reload_refused": Rule(409, 409, None),
    "invalid_manifest": Rule(409, 409, None),
    "artifact_mismatch": Rule(409, 409, None),
    "load_failed": Rule(409, 409, None),
    "internal": Rule(500, 500, None),
}
RETRY_CODES = frozenset(("loading", "queue_full", "overloaded", "draining", "model_unavailable"))
V2_PREFIX = "/v2"


class ServiceError(Exception):
    """A refusal named by ``code`` (a key of ``RULES``), the field at fault, and for overload
    how many seconds to wait before retrying."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        if code not in RULES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = (
            retry_after if retry_after is not None else (1 if code in RETRY_CODES else None)
        )

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    @property
    def status(self) -> int:
        return self.rule.status


def bad_input(field: str, message: str, code: str = "invalid_value") -> ServiceError:
    return ServiceError(code, message, field)


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every ``/v1`` error answer."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Every ``/v2`` error answer (Open Inference Protocol)."""

    error: str


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def render(exc: ServiceError, path: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, JSON body) of ``exc`` in the shape of the door ``path`` belongs to."""
    rule = exc.rule
    headers = {"content-type": "application/json"}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if is_v2(path):
        return rule.v2_status, headers, _json({"error": exc.message})
    body = {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}
    return rule.status, headers, _json(body)


def _json(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(exc: ServiceError, path: str) -> Response:
    status, headers, body = render(exc, path)
    headers.pop("content-type")
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def field_path(loc: tuple | list) -> str:
    """``("body", "latents", 0, 3)`` -> ``latents[0][3]``; the location names the field."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "float", "list[int]", "list[union[int,str]]"):
            continue  # union branch names add nothing for the client
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def from_validation(errors: list[Any]) -> ServiceError:
    """pydantic's (or FastAPI's) validation errors -> the first one, naming its field."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ServiceError("malformed_json", f"body is not valid JSON: {first.get('msg')}", "body")
    field = field_path(first.get("loc", ("body",)))
    if kind == "missing" and field == "body":
        return ServiceError("missing_body", "a JSON body is required", "body")
    return bad_input(field, f"{field}: {first.get('msg', 'invalid value')}")


HTTP_CODES = {
    400: "malformed_json",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI, count_refusal: Any = None) -> None:
    """Answer every exception through ``RULES``; ``count_refusal(request, error)`` counts it."""

    def answer(request: Request, exc: ServiceError) -> Response:
        if count_refusal is not None:
            count_refusal(request, exc)
        return error_response(exc, request.url.path)

    async def service_error(request: Request, exc: ServiceError) -> Response:
        return answer(request, exc)

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, from_validation(list(exc.errors())))

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "not_found")
        field = "body" if exc.status_code in (400, 413, 415) else None
        response = answer(request, ServiceError(code, str(exc.detail), field))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every route on the path, not only the first one's methods
            response.headers["allow"] = ", ".join(_allowed_methods(request))
        return response

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return answer(request, ServiceError("client_gone", "client disconnected"))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ServiceError("internal", "internal error"), request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, unexpected)


# Documented on every operation, so the schema says what an error looks like.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "A field is invalid; the error names it"},
    "4XX": {"model": ErrorBody, "description": "The request was refused"},
    "5XX": {"model": ErrorBody, "description": "Overloaded, loading, draining or timed out"},
}
V2_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": V2ErrorBody, "description": "The request was refused"},
    "5XX": {"model": V2ErrorBody, "description": "Overloaded, loading, draining or timed out"},
}
