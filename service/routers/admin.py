"""Reload: load a model's newest (or a named) version and swap it in without dropping requests."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request

from ..context import context
from ..errors import ApiError
from ..registry import ModelNotFound, ReloadRefused
from ..schemas import ReloadRequest

router = APIRouter(tags=["admin"])


@router.post(
    "/v1/models/{name}/reload",
    summary="Load the highest (or given) version, verify sha256, warm up, swap atomically",
)
async def reload_model(
    request: Request,
    name: str,
    body: ReloadRequest | None = None,
    authorization: str | None = Header(default=None),
) -> dict:
    ctx = context(request)
    token = ctx.settings.admin_token
    if token and authorization != f"Bearer {token}":
        raise ApiError(401, "unauthorized", "reload needs the admin token", "authorization")
    version = body.version if body is not None else None
    try:
        loaded, previous = await ctx.registry.reload(name, version)
    except ModelNotFound:
        raise ApiError(
            404, "model_not_found", f"no model named {name!r} in the store", "name"
        ) from None
    except ReloadRefused as exc:
        status = 404 if exc.code == "version_not_found" else 409
        raise ApiError(
            status, exc.code, f"{exc}; the serving version is unchanged", "version"
        ) from exc
    return {
        "name": name,
        "version": loaded.version,
        "previous_version": previous,
        "provider": loaded.provider,
        "sha256": loaded.manifest.artifact.sha256,
    }
