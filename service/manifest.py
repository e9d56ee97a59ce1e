"""The model contract: one schema for ``model_store/<name>/<version>/manifest.json``.

Training writes it at export time and the service reads it at load time, so both sides
import this module (it depends on pydantic and numpy only, never on torch).

It also fixes how a seed becomes a latent vector, because "the image for seed 7" must
mean the same thing in the trainer's sample grids, in the service, and in clients.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "generator.onnx"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a model name (the manifest's pattern); the service checks it
    before any filesystem access, so no other string (``..``, a 300-character name) reaches
    it, and ``gan-train`` before a run starts."""
    return _NAME.fullmatch(name) is not None


# Input/output names of every exported generator.
LATENT_INPUT = "z"
LABEL_INPUT = "label"
IMAGE_OUTPUT = "image"
# Inputs of an image-to-image generator: the source images and, per image, the direction.
SOURCE_INPUT = "source"
DIRECTION_INPUT = "direction"
DIRECTIONS = ("A->B", "B->A")  # direction index 0 and 1

ModelKind = Literal["noise-to-image", "image-to-image", "text-to-image"]
NOISE_TO_IMAGE: ModelKind = "noise-to-image"
IMAGE_TO_IMAGE: ModelKind = "image-to-image"
TEXT_TO_IMAGE: ModelKind = "text-to-image"
# The second input of a text-to-image generator: token ids [N, L] of its vocabulary file.
TOKENS_INPUT = "tokens"

MAX_SEED = 2**63 - 1


class TensorSpec(BaseModel):
    """Name, dtype and shape of one graph input or output; -1 marks the dynamic batch axis."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["float32", "int64", "uint8"]
    shape: list[int]
    range: list[float] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[low, high] of the values; absent (older manifests): the documented one",
    )

    def layout(self) -> tuple[str, str, list[int]]:
        """Name, dtype and shape: what must match the contract exactly."""
        return self.name, self.dtype, self.shape


class LatentSpec(BaseModel):
    """How latent vectors are drawn. Seeds map to latents through :func:`latent_from_seed`."""

    model_config = ConfigDict(extra="forbid")

    distribution: Literal["standard_normal"] = "standard_normal"
    generator: Literal["numpy.PCG64"] = "numpy.PCG64"
    dtype: Literal["float32"] = "float32"


class TruncationSpec(BaseModel):
    """BigGAN's truncation trick, applied where latents are drawn from seeds: every value
    beyond ``threshold`` in magnitude is redrawn (see :func:`latent_from_seed`). A request's
    ``truncation`` psi in [0, 1] scales the threshold; absent, the model's own threshold holds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["resample"] = "resample"
    threshold: float = Field(gt=0.0, le=16.0)

    def threshold_for(self, psi: float | None) -> float:
        """The threshold a request with truncation ``psi`` gets (None: the model's own)."""
        return self.threshold if psi is None else self.threshold * psi


class ArtifactSpec(BaseModel):
    """The ONNX file beside the manifest and its checksum, checked before every load."""

    model_config = ConfigDict(extra="forbid")

    file: str = ONNX_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int | None = None


class SideFile(BaseModel):
    """A file the graph needs besides the ONNX (e.g. a vocabulary), checked like the ONNX."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    purpose: str = ""


class TranslationSpec(BaseModel):
    """An image-to-image model's two domains; direction 0 maps A to B, 1 maps B to A."""

    model_config = ConfigDict(extra="forbid")

    domain_a: str
    domain_b: str
    directions: list[str] = Field(default_factory=lambda: list(DIRECTIONS))

    @field_validator("directions")
    @classmethod
    def _fixed(cls, v: list[str]) -> list[str]:
        if v != list(DIRECTIONS):
            raise ValueError(f"directions must be {list(DIRECTIONS)}")
        return v


class TextSpec(BaseModel):
    """A text-to-image model's captions: the vocabulary side file and the token layout."""

    model_config = ConfigDict(extra="forbid")

    vocabulary: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    vocab_size: int = Field(ge=2, le=1_000_000)
    max_tokens: int = Field(ge=1, le=1024)
    pad_id: Literal[0] = 0


class Manifest(BaseModel):
    """Everything the service needs to serve a generator, and what a user wants to know of it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    created_at: datetime
    description: str = ""
    family: str = Field(default="", description="GAN family, e.g. dcgan or gan2014")
    paper: str = Field(default="", description="the paper the family follows")
    kind: ModelKind = Field(
        default=NOISE_TO_IMAGE, description="what the graph maps; absent in older manifests"
    )
    nz: int = Field(ge=0, le=4096, description="latent size; 0 for an image-to-image model")
    image_size: int = Field(ge=4, le=4096)
    channels: Literal[1, 3]
    num_classes: int = Field(default=0, ge=0, description="0 for an unconditional generator")
    class_names: list[str] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    latent: LatentSpec = Field(default_factory=LatentSpec)
    truncation: TruncationSpec | None = Field(
        default=None, description="absent: seeds' latents untruncated, psi scales latents"
    )
    translation: TranslationSpec | None = Field(
        default=None, description="an image-to-image model's domains"
    )
    text: TextSpec | None = Field(default=None, description="a text-to-image model's captions")
    artifact: ArtifactSpec
    side_files: list[SideFile] = Field(default_factory=list)
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0 and self.kind == NOISE_TO_IMAGE

    @property
    def translates(self) -> bool:
        return self.kind == IMAGE_TO_IMAGE

    @property
    def takes_text(self) -> bool:
        return self.kind == TEXT_TO_IMAGE

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"image_size must be a power of two, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is "
                f"{self.num_classes}"
            )
        if self.kind == IMAGE_TO_IMAGE:
            if self.nz != 0 or self.translation is None:
                raise ValueError("an image-to-image model has nz 0 and a translation object")
            expected_in = expected_translation_inputs(self.image_size, self.channels)
        elif self.kind == NOISE_TO_IMAGE:
            if self.nz < 1 or self.translation is not None:
                raise ValueError("a noise-to-image model has nz >= 1 and no translation object")
            expected_in = expected_inputs(self.nz, self.num_classes)
        else:
            text = self.text
            if self.nz < 1 or text is None or self.translation is not None:
                raise ValueError("a text-to-image model has nz >= 1, a text object, no translation")
            if text.vocabulary not in {side.file for side in self.side_files}:
                raise ValueError(f"the vocabulary {text.vocabulary!r} must be a side file")
            expected_in = expected_text_inputs(self.nz, text.max_tokens, text.vocab_size)
        if self.text is not None and self.kind != TEXT_TO_IMAGE:
            raise ValueError("only a text-to-image model has a text object")
        _check_specs("inputs", self.inputs, expected_in)
        _check_specs("outputs", self.outputs, expected_outputs(self.image_size, self.channels))
        return self

    # --- reading and writing -------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_FILE
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    def onnx_path(self, directory: str | Path) -> Path:
        return Path(directory) / self.artifact.file

    def verify_artifact(self, directory: str | Path) -> None:
        """Raise :class:`ArtifactMismatch` unless the ONNX file and every side file match the
        manifest's sha256."""
        _verify_file(self.onnx_path(directory), self.artifact.sha256)
        for side in self.side_files:
            _verify_file(Path(directory) / side.file, side.sha256)


def _verify_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ArtifactMismatch(f"{path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactMismatch(f"{path} has sha256 {actual}, but the manifest expects {expected}")


def _check_specs(what: str, given: list[TensorSpec], expected: list[TensorSpec]) -> None:
    """Names, dtypes and shapes must be the contract's; a missing range gets the contract's,
    a declared one must equal it."""
    if [s.layout() for s in given] != [s.layout() for s in expected]:
        raise ValueError(f"{what} must be {[s.model_dump() for s in expected]}")
    for spec, want in zip(given, expected, strict=True):
        if spec.range is None:
            spec.range = want.range
        elif spec.range != want.range:
            raise ValueError(f"{what} {spec.name!r} must have range {want.range}")


class ArtifactMismatch(ValueError):
    """The ONNX file beside a manifest is missing or is not the one the manifest describes."""


def expected_inputs(nz: int, num_classes: int) -> list[TensorSpec]:
    """A noise-to-image graph's inputs; latents are unbounded standard normal draws."""
    specs = [TensorSpec(name=LATENT_INPUT, dtype="float32", shape=[-1, nz], range=None)]
    if num_classes > 0:
        specs.append(
            TensorSpec(name=LABEL_INPUT, dtype="int64", shape=[-1], range=[0, num_classes - 1])
        )
    return specs


def expected_text_inputs(nz: int, max_tokens: int, vocab_size: int) -> list[TensorSpec]:
    """A text-to-image graph's inputs: latents and each caption's token ids (0 pads)."""
    return [
        TensorSpec(name=LATENT_INPUT, dtype="float32", shape=[-1, nz], range=None),
        TensorSpec(
            name=TOKENS_INPUT, dtype="int64", shape=[-1, max_tokens], range=[0, vocab_size - 1]
        ),
    ]


def expected_translation_inputs(image_size: int, channels: int) -> list[TensorSpec]:
    """An image-to-image graph's inputs: uint8 NHWC source images and a direction per image."""
    return [
        TensorSpec(
            name=SOURCE_INPUT,
            dtype="uint8",
            shape=[-1, image_size, image_size, channels],
            range=[0, 255],
        ),
        TensorSpec(name=DIRECTION_INPUT, dtype="int64", shape=[-1], range=[0, len(DIRECTIONS) - 1]),
    ]


def expected_outputs(image_size: int, channels: int) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=IMAGE_OUTPUT,
            dtype="uint8",
            shape=[-1, image_size, image_size, channels],
            range=[0, 255],
        )
    ]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# --- model store layout ------------------------------------------------------------------


def version_dirs(model_dir: str | Path) -> dict[int, Path]:
    """Map version number to directory for ``model_store/<name>/<int>/`` holding a manifest."""
    found: dict[int, Path] = {}
    root = Path(model_dir)
    if not root.is_dir():
        return found
    for child in root.iterdir():
        if child.is_dir() and re.fullmatch(r"[1-9][0-9]*", child.name):
            if (child / MANIFEST_FILE).is_file():
                found[int(child.name)] = child
    return dict(sorted(found.items()))


def next_version(model_dir: str | Path) -> int:
    existing = version_dirs(model_dir)
    return max(existing, default=0) + 1


# --- seeds and latents -------------------------------------------------------------------


MIN_RESAMPLE_THRESHOLD = 0.05  # below this, redrawing would take unbounded time


def latent_from_seed(seed: int, nz: int, threshold: float | None = None) -> np.ndarray:
    """The documented seed-to-latent map: ``numpy.random.Generator(PCG64(seed))``,
    ``standard_normal(nz, dtype=float32)``. A seed's latent never depends on its neighbours.

    With a ``threshold`` (resample truncation): while any value has ``|v| > threshold``, those
    values, in index order, are replaced by the same generator's next draws. A threshold of 0
    gives the zero latent (the limit); positive thresholds below ``MIN_RESAMPLE_THRESHOLD``
    count as that minimum. Without one, the latent is exactly the untruncated draw.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    rng = np.random.Generator(np.random.PCG64(seed))
    z = rng.standard_normal(nz, dtype=np.float32)
    if threshold is None:
        return z
    if threshold <= 0.0:
        return np.zeros(nz, dtype=np.float32)
    limit = np.float32(max(threshold, MIN_RESAMPLE_THRESHOLD))
    outside = np.abs(z) > limit
    while outside.any():
        z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(z) > limit
    return z


def latents_from_seeds(
    seeds: list[int] | np.ndarray, nz: int, threshold: float | None = None
) -> np.ndarray:
    """Stack :func:`latent_from_seed` for each seed into a float32 array of shape [n, nz]."""
    out = np.empty((len(seeds), nz), dtype=np.float32)
    for i, seed in enumerate(seeds):
        out[i] = latent_from_seed(int(seed), nz, threshold)
    return out


def model_latents(
    manifest: Manifest, seeds: list[int] | np.ndarray, psi: float | None = None
) -> np.ndarray:
    """Seeds -> latents by the model's own rule: resampled within the (psi-scaled) threshold
    for a model with resample truncation, the plain draw otherwise (psi is then applied by
    scaling, :func:`truncate_latents`)."""
    return rule_latents(manifest.truncation, manifest.nz, seeds, psi)


def rule_latents(
    spec: TruncationSpec | None, nz: int, seeds: list[int] | np.ndarray, psi: float | None = None
) -> np.ndarray:
    """:func:`model_latents` for a caller that has the truncation spec and nz, not the manifest
    (a client reads them from the v2 metadata)."""
    threshold = None if spec is None else spec.threshold_for(psi)
    return latents_from_seeds(seeds, nz, threshold)


def truncate_latents(manifest: Manifest, z: np.ndarray, psi: float | None) -> np.ndarray:
    """Truncation ``psi`` on latents already drawn. No truncation spec: ``psi * z`` (None or 1
    leaves z unchanged). Resample truncation: values are clipped to the psi-scaled threshold,
    which leaves the model's own seed latents unchanged; latents a caller sent cannot be redrawn.
    """
    return truncate_by(manifest.truncation, z, psi)


def truncate_by(spec: TruncationSpec | None, z: np.ndarray, psi: float | None) -> np.ndarray:
    """:func:`truncate_latents` by a truncation spec (None: scaling by psi)."""
    if spec is None:
        if psi is None or psi == 1.0:
            return z
        return (z * np.float32(psi)).astype(np.float32)
    t = spec.threshold_for(psi)
    limit = np.float32(0.0 if t <= 0.0 else max(t, MIN_RESAMPLE_THRESHOLD))
    return np.clip(z, -limit, limit).astype(np.float32)


def seed_contract_latents(
    spec: TruncationSpec | None, nz: int, seeds: list[int] | np.ndarray, psi: float | None = None
) -> np.ndarray:
    """What the service feeds the generator for these seeds and psi (drawn by the rule, then
    truncated): the latents a client sends to get the seed routes' images."""
    return truncate_by(spec, rule_latents(spec, nz, seeds, psi), psi)


def latent_rule_text(spec: TruncationSpec | None) -> str:
    """The seed -> latent rule in words, for the v2 metadata."""
    rule = "seed s -> numpy PCG64(s).standard_normal(nz, float32)"
    if spec is None:
        return rule
    return (
        f"{rule}; then each value beyond truncation.threshold ({spec.threshold:g}) in magnitude "
        "is redrawn from the same generator until none is"
    )


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)
