"""One JSON error shape for every refusal: ``{"error": {"code", "message", "field"}}``.

User mistakes are 4xx naming the offending field; overload is 503 with Retry-After; a
deadline is 504. Nothing a client sends may produce a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("gan_serve.errors")


class ApiError(Exception):
    """An error answered to the client as JSON with its status, code and field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def bad_input(field: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(422, code, message, field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


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


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    kind = first.get("type", "")
    if kind == "json_invalid":
        return error_response(
            400, "malformed_json", f"body is not valid JSON: {first.get('msg')}", "body"
        )
    field = field_path(first.get("loc", ("body",)))
    if kind == "missing" and field == "body":
        return error_response(400, "missing_body", "a JSON body is required", "body")
    message = f"{field}: {first.get('msg', 'invalid value')}"
    return error_response(422, "invalid_value", message, field)


def install_error_handlers(app: FastAPI, on_bad_request: Any = None) -> None:
    """Map every exception type to the JSON error shape; ``on_bad_request(request)`` counts 4xx."""

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if on_bad_request is not None and 400 <= exc.status < 500 and exc.status != 499:
            on_bad_request(request)
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if on_bad_request is not None:
            on_bad_request(request)
        return _validation_response(request, exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "malformed_json",
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
        }.get(exc.status_code, "http_error")
        field = "body" if exc.status_code in (400, 413) else None
        return error_response(
            exc.status_code, code, str(exc.detail), field, getattr(exc, "headers", None)
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
