"""Reload: load a model's newest (or a named) version and swap it in without dropping requests.

Privileged: it needs the admin token, or, with none configured, a same-origin loopback
client (service/access.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..access import check_admin
from ..context import context
from ..errors import ERROR_RESPONSES, ServiceError
from ..registry import ModelNotFound, ReloadRefused
from ..schemas import ReloadRequest, json_schema_of, parse_json_body

router = APIRouter(tags=["admin"], responses=ERROR_RESPONSES)


@router.post(
    "/v1/models/{name}/reload",
    summary="Load the highest (or given) version, verify sha256, warm up, swap atomically",
    openapi_extra=json_schema_of(ReloadRequest),
)
async def reload_model(request: Request, name: str) -> dict:
    ctx = context(request)
    check_admin(request, ctx.settings)
    body = parse_json_body(
        ReloadRequest, request.headers.get("content-type"), await request.body(), required=False
    )
    try:
        loaded, previous = await ctx.registry.reload(name, body.version)
    except ModelNotFound:
        raise ServiceError(
            "model_not_found", f"no model named {name[:64]!r} in the store", "name"
        ) from None
    except ReloadRefused as exc:
        raise ServiceError(
            exc.code, f"{exc}; the serving version is unchanged", "version", exc.retry_after
        ) from exc
    return {
        "name": name,
        "version": loaded.version,
        "previous_version": previous,
        "provider": loaded.provider,
        "sha256": loaded.manifest.artifact.sha256,
    }
