"""The models under test: the shipped generator (or a same-shaped random stand-in until it is
there) and a 64x64 RGB DCGAN generator, each copied into a bench-only model store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from service.manifest import NOISE_TO_IMAGE, Manifest, version_dirs

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_STORE = REPO_ROOT / "model_store"
SHIPPED_NAME = "mnist-cdcgan"
RGB64_NAME = "dcgan64-rgb"
DEFAULT_MODELS = (SHIPPED_NAME, RGB64_NAME)


def shipped_family_dirs() -> tuple[str, ...]:
    """The newest version folder of every other shipped noise-to-image model (the GAN families),
    as paths :func:`resolve_model` takes; image- and text-to-image models need other inputs."""
    found = []
    for model_dir in sorted(p for p in SHIPPED_STORE.iterdir() if p.is_dir()):
        versions = version_dirs(model_dir)
        if model_dir.name == SHIPPED_NAME or not versions:
            continue
        newest = versions[max(versions)]
        if Manifest.load(newest).kind == NOISE_TO_IMAGE:
            found.append(str(newest))
    return tuple(found)


@dataclass(frozen=True)
class BenchModel:
    """A model ready to serve: its own store (holding only it) and its version directory."""

    name: str
    store: Path
    version_dir: Path
    manifest: Manifest
    origin: str  # "shipped", "random stand-in", "random", or the path it came from

    @property
    def label_classes(self) -> int:
        return self.manifest.num_classes


def _export_random(work: Path, name: str, image_size: int, channels: int, classes: int) -> Path:
    """A randomly initialised DCGAN generator exported once and reused (needs the train extra)."""
    source_store = work / "exported"
    existing = version_dirs(source_store / name)
    if existing:
        return existing[max(existing)]
    from training.export import export_random_generator  # torch only here, never in servers
    from training.model import ModelConfig

    cfg = ModelConfig(image_size=image_size, channels=channels, num_classes=classes)
    return Path(export_random_generator(source_store, name, cfg, seed=0))


def _isolated_store(work: Path, name: str, version_dir: Path) -> tuple[Path, Path]:
    """Copy one version into ``work/stores/<name>/<name>/<version>`` so a server sees only it."""
    manifest = Manifest.load(version_dir)
    store = work / "stores" / name
    target = store / name / str(manifest.version)
    if store.exists():
        shutil.rmtree(store)
    shutil.copytree(version_dir, target)
    return store, target


def resolve_model(spec: str, work: Path) -> BenchModel:
    """``mnist-cdcgan`` (shipped, else a random stand-in of the same shape), ``dcgan64-rgb``
    (random 64x64 RGB), or a path to a ``<name>/<version>`` directory."""
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        source, origin = path, str(path)
    elif spec == SHIPPED_NAME and version_dirs(SHIPPED_STORE / SHIPPED_NAME):
        shipped = version_dirs(SHIPPED_STORE / SHIPPED_NAME)
        source, origin = shipped[max(shipped)], "shipped"
    elif spec == SHIPPED_NAME:
        source = _export_random(work, SHIPPED_NAME, 32, 1, 10)
        origin = "random stand-in (the shipped model is not in model_store yet)"
    elif spec == RGB64_NAME:
        source, origin = _export_random(work, RGB64_NAME, 64, 3, 0), "random"
    else:
        raise ValueError(
            f"unknown model {spec!r}: use {', '.join(DEFAULT_MODELS)} or a version dir"
        )
    manifest = Manifest.load(source)
    store, version_dir = _isolated_store(work, manifest.name, source)
    return BenchModel(manifest.name, store, version_dir, Manifest.load(version_dir), origin)
