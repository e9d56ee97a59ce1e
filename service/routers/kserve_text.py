"""Open Inference Protocol inputs of a text-to-image model: ``z`` FP32 [n, nz] and ``text``
BYTES [n] (or [1]: one caption for all), captions as JSON strings."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..context import ServiceContext
from ..manifest import LATENT_INPUT, Manifest
from ..pipeline import Inputs, plan_text_tensors
from ..registry import LoadedModel
from .kserve import read_tensor, v2_error

TEXT_INPUT = "text"  # the OIP input; the graph itself takes token ids


def text_metadata(manifest: Manifest) -> list[dict[str, Any]]:
    return [
        {"name": LATENT_INPUT, "datatype": "FP32", "shape": [-1, manifest.nz]},
        {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]},
    ]


def read_captions(spec: dict[str, Any], index: int) -> list[str]:
    """A BYTES input given as JSON strings -> the captions."""
    shape, data = spec.get("shape"), spec.get("data")
    field = f"input '{TEXT_INPUT}'"
    if (spec.get("parameters") or {}).get("binary_data_size") is not None:
        raise v2_error(f"{field}: send captions as JSON strings in data, not binary data")
    if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int):
        raise v2_error(f"{field}: shape must be [n]")
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise v2_error(f"{field}: data must be an array of strings")
    if len(data) != shape[0]:
        raise v2_error(f"{field}: data has {len(data)} captions but shape says {shape[0]}")
    return data


def text_inputs(
    ctx: ServiceContext, model: LoadedModel, header: dict[str, Any], tail: memoryview
) -> Inputs:
    """The request's ``z`` and ``text`` -> the graph's latents and token ids."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise v2_error("inputs must be a non-empty array")
    z: np.ndarray | None = None
    captions: list[str] | None = None
    offset = 0
    for i, spec in enumerate(inputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name == TEXT_INPUT and captions is None:
            if spec.get("datatype") != "BYTES":
                raise v2_error(f"input '{TEXT_INPUT}' must have datatype BYTES")
            captions = read_captions(spec, i)
        elif name == LATENT_INPUT and z is None:
            if spec.get("datatype") != "FP32":
                raise v2_error(f"input '{LATENT_INPUT}' must have datatype FP32")
            _, z, offset = read_tensor(spec, i, tail, offset)
        else:
            raise v2_error(
                f"unexpected input {name!r} at inputs[{i}]; model '{model.name}' takes "
                f"'{LATENT_INPUT}' (FP32) and '{TEXT_INPUT}' (BYTES), once each"
            )
    if offset != len(tail):
        raise v2_error(f"body has {len(tail) - offset} bytes of binary data no input claims")
    if z is None or captions is None:
        raise v2_error(f"missing input '{LATENT_INPUT if z is None else TEXT_INPUT}'")
    return plan_text_tensors(ctx, model, z, captions)
