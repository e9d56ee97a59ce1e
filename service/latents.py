"""Request fields -> model inputs: seeds, latents, labels and truncation as numpy arrays.

* Seeds: image i of a request with ``seed=s`` uses seed ``s + i``; each seed's latent comes from
  :func:`service.manifest.latents_from_seeds` (numpy PCG64 standard normal), so an image
  depends on its seed only, never on its neighbours in a batch.
* Labels (conditional models): one label for all images, one per image, or omitted. Omitted
  means balanced: image i gets ``seed_i mod num_classes`` (``i mod num_classes`` when latents
  were given), so consecutive seeds cycle through every class.
* Truncation psi, by the model's manifest (rules in :mod:`service.manifest`):
  - no ``truncation`` in the manifest (DCGAN and older models): psi scales the latent toward
    the mean, ``z' = psi * z``; psi = 1 or absent is no truncation.
  - ``{"kind": "resample", "threshold": T}`` (BigGAN): seed latents are drawn with every value
    beyond ``psi * T`` redrawn, deterministic per seed; absent psi means T, psi = 0 the zero
    latent. Latents sent in a request are clipped to ``psi * T`` instead.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

import numpy as np

from .errors import bad_input
from .manifest import MAX_SEED, Manifest, model_latents, truncate_latents

LabelValue = int | str


def random_seed() -> int:
    return secrets.randbits(63)


def seeds_for(seed: int | None, n: int) -> list[int]:
    """``seed, seed+1, ..., seed+n-1``; a random start seed when none is given."""
    start = random_seed() % (MAX_SEED - n + 2) if seed is None else seed
    if start + n - 1 > MAX_SEED:
        raise bad_input("seed", f"seed + n - 1 must not exceed {MAX_SEED}")
    return list(range(start, start + n))


def latents_from_request(latents: Sequence[Sequence[float]], nz: int, field: str) -> np.ndarray:
    """Given latents as nested lists -> float32 [n, nz]; wrong length or non-finite -> 422."""
    for i, row in enumerate(latents):
        if len(row) != nz:
            raise bad_input(f"{field}[{i}]", f"latent must have nz={nz} values, got {len(row)}")
    with np.errstate(over="ignore"):  # too-large values become inf, refused just below
        z = np.asarray(latents, dtype=np.float32).reshape(len(latents), nz)
    if not np.isfinite(z).all():  # also catches floats that overflow float32
        row = int(np.argwhere(~np.isfinite(z))[0][0])
        raise bad_input(f"{field}[{row}]", "latents must be finite numbers")
    return z


def seed_latents(seeds: Sequence[int], manifest: Manifest, psi: float | None = None) -> np.ndarray:
    """The model's latents for these seeds (resample truncation applied here when it has one)."""
    return model_latents(manifest, list(seeds), psi)


_INDEX = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²", "١"


def label_index(manifest: Manifest, value: LabelValue, field: str) -> int:
    """The one label rule, for every route: a class name, else a class index given as an
    integer or as ASCII digits (a query string's label is text); anything else -> 422."""
    if isinstance(value, bool):
        raise bad_input(field, "label must be an integer or a class name")
    if isinstance(value, str):
        if value in manifest.class_names:
            return manifest.class_names.index(value)
        if not _INDEX.fullmatch(value):
            shown = value if len(value) <= 64 else value[:64] + "..."
            raise bad_input(field, f"unknown label {shown!r}", "unknown_label")
        value = int(value)
    if 0 <= value < manifest.num_classes:
        return value
    raise bad_input(
        field, f"unknown label {value}: must be 0..{manifest.num_classes - 1}", "unknown_label"
    )


def labels_for(
    manifest: Manifest,
    labels: LabelValue | Sequence[LabelValue] | None,
    n: int,
    seeds: Sequence[int] | None,
    field: str = "labels",
) -> np.ndarray | None:
    """int64 [n] for a conditional model, None for an unconditional one (which takes no labels)."""
    if not manifest.conditional:
        if labels is not None:
            raise bad_input(field, f"model {manifest.name} is unconditional and takes no labels")
        return None
    if labels is None:
        base = np.asarray(seeds, dtype=np.uint64) if seeds is not None else np.arange(n)
        return (base % manifest.num_classes).astype(np.int64)
    if isinstance(labels, (int, str)):
        return np.full(n, label_index(manifest, labels, field), np.int64)
    if len(labels) == 1:
        return np.full(n, label_index(manifest, labels[0], f"{field}[0]"), np.int64)
    if len(labels) != n:
        raise bad_input(field, f"give one label for all images or exactly n={n}, got {len(labels)}")
    return np.array(
        [label_index(manifest, v, f"{field}[{i}]") for i, v in enumerate(labels)], np.int64
    )


def truncate(z: np.ndarray, psi: float | None, manifest: Manifest) -> np.ndarray:
    """Truncation psi on drawn latents, by the model's rule (see the module docstring)."""
    return truncate_latents(manifest, z, psi)


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, method: str) -> np.ndarray:
    """float32 [steps, nz] from a to b inclusive, linear (lerp) or spherical (slerp)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if method == "slerp":
        na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
        if na > 0 and nb > 0:
            cos = np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0)
            omega = np.arccos(cos)
            if omega > 1e-6:
                so = np.sin(omega)
                out = (np.sin((1 - t) * omega) / so) * a64 + (np.sin(t * omega) / so) * b64
                return out.astype(np.float32)
    return ((1 - t) * a64 + t * b64).astype(np.float32)
