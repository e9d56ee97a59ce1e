"""Model listing: manifest, versions on disk, provider, evaluation figures."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..context import context
from ..errors import ERROR_RESPONSES, ServiceError
from ..manifest import Manifest
from ..pipeline import serving
from ..registry import LoadedModel, ModelRegistry
from ..text import load_vocabulary

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)


def caption_info(model: LoadedModel) -> dict:
    """A text-to-image model's vocabulary: the words a caption may use, and how many."""
    m = model.manifest
    if m.text is None:
        return {}
    side = {s.file: s.sha256 for s in m.side_files}
    vocab = load_vocabulary(model.directory, side.get(m.text.vocabulary, ""))
    return {"vocabulary": vocab.known_words(), "max_caption_words": vocab.max_tokens}


def model_info(model: LoadedModel, registry: ModelRegistry) -> dict:
    m = model.manifest
    return {
        "name": model.name,
        "version": model.version,
        "versions": sorted(registry.versions_on_disk(model.name)),
        "loaded_versions": registry.loaded_versions(model.name),
        "provider": model.provider,
        "kind": m.kind,
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
        **caption_info(model),
        "evaluation": m.evaluation,
        "manifest": m.model_dump(mode="json"),
    }


@router.get("/v1/models", summary="Every served model")
async def list_models(request: Request) -> dict:
    registry = context(request).registry
    return {"models": [model_info(registry.get(n), registry) for n in registry.names()]}


@router.get("/v1/models/{name}", summary="One model: manifest, versions, provider, evaluation")
async def show_model(request: Request, name: str) -> dict:
    ctx = context(request)
    return model_info(serving(ctx, name), ctx.registry)


@router.get("/v1/models/{name}/versions/{version}", summary="The manifest of one version on disk")
async def show_version(request: Request, name: str, version: int) -> dict:
    registry = context(request).registry
    directory = registry.versions_on_disk(name).get(version)  # {} for an impossible name
    if directory is None:
        raise ServiceError("version_not_found", f"{name[:64]} has no version {version}", "version")
    try:
        manifest = Manifest.load(directory)
    except Exception as exc:
        message = f"{name} v{version}: {registry.without_paths(exc)}"
        raise ServiceError("invalid_manifest", message, "version") from exc
    serving_now = name in registry.models and registry.get(name).version == version
    return {
        "name": name,
        "version": version,
        "serving": serving_now,
        "manifest": manifest.model_dump(mode="json"),
    }
