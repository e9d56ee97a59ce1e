"""Model listing: manifest, versions on disk, provider, evaluation figures."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..context import context
from ..errors import ApiError
from ..manifest import Manifest
from ..registry import LoadedModel, ModelRegistry

router = APIRouter(tags=["models"])


def model_info(model: LoadedModel, registry: ModelRegistry) -> dict:
    m = model.manifest
    return {
        "name": model.name,
        "version": model.version,
        "versions": sorted(registry.versions_on_disk(model.name)),
        "loaded_versions": registry.loaded_versions(model.name),
        "provider": model.provider,
        "conditional": m.conditional,
        "num_classes": m.num_classes,
        "class_names": m.class_names,
        "nz": m.nz,
        "image_size": m.image_size,
        "channels": m.channels,
        "batch_sizes": model.runtime.batch_sizes,
        "description": m.description,
        "family": m.family,
        "paper": m.paper,
        "evaluation": m.evaluation,
        "manifest": m.model_dump(mode="json"),
    }


def get_model(request: Request, name: str) -> LoadedModel:
    registry = context(request).registry
    try:
        return registry.get(name)
    except KeyError:
        if registry.state == "loading":
            raise ApiError(
                503, "loading", "models are still loading", None, {"Retry-After": "1"}
            ) from None
        raise ApiError(404, "model_not_found", f"no model named {name!r}", "name") from None


@router.get("/v1/models", summary="Every served model")
async def list_models(request: Request) -> dict:
    registry = context(request).registry
    return {"models": [model_info(registry.get(n), registry) for n in registry.names()]}


@router.get("/v1/models/{name}", summary="One model: manifest, versions, provider, evaluation")
async def show_model(request: Request, name: str) -> dict:
    return model_info(get_model(request, name), context(request).registry)


@router.get("/v1/models/{name}/versions/{version}", summary="The manifest of one version on disk")
async def show_version(request: Request, name: str, version: int) -> dict:
    registry = context(request).registry
    directory = registry.versions_on_disk(name).get(version)
    if directory is None:
        raise ApiError(404, "version_not_found", f"{name} has no version {version}", "version")
    try:
        manifest = Manifest.load(directory)
    except Exception as exc:
        raise ApiError(409, "invalid_manifest", f"{name} v{version}: {exc}", "version") from exc
    serving = name in registry.models and registry.get(name).version == version
    return {
        "name": name,
        "version": version,
        "serving": serving,
        "manifest": manifest.model_dump(mode="json"),
    }
