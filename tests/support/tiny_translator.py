"""A tiny image-to-image graph built with ``onnx.helper`` (no torch), plus its manifest.

``source`` uint8 [N, S, S, C] and ``direction`` int64 [N] -> ``image``: A->B (0) inverts the
pixels (255 - x), B->A (1) returns them unchanged, so a test can tell both directions and
every image of a mixed batch apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import (
    DIRECTION_INPUT,
    IMAGE_OUTPUT,
    IMAGE_TO_IMAGE,
    ONNX_FILE,
    SOURCE_INPUT,
    ArtifactSpec,
    Manifest,
    TranslationSpec,
    expected_outputs,
    expected_translation_inputs,
    sha256_file,
    utc_now,
)

OPSET = 17


def build_tiny_translator(image_size: int = 8, channels: int = 1) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array(255, np.uint8), "full"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "per_image"),
    ]
    nodes = [
        helper.make_node("Sub", ["full", SOURCE_INPUT], ["inverted"]),
        helper.make_node("Equal", [DIRECTION_INPUT, "zero"], ["to_b"]),
        helper.make_node("Reshape", ["to_b", "per_image"], ["pick"]),
        helper.make_node("Where", ["pick", "inverted", SOURCE_INPUT], [IMAGE_OUTPUT]),
    ]
    shape = ["N", image_size, image_size, channels]
    inputs = [
        helper.make_tensor_value_info(SOURCE_INPUT, TensorProto.UINT8, shape),
        helper.make_tensor_value_info(DIRECTION_INPUT, TensorProto.INT64, ["N"]),
    ]
    output = helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.UINT8, shape)
    graph = helper.make_graph(nodes, "tiny_translator", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_translator(
    store: Path, name: str = "flip", version: int = 1, image_size: int = 8, channels: int = 1
) -> Path:
    """Write ``store/<name>/<version>/{generator.onnx, manifest.json}``; return that directory."""
    directory = Path(store) / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / ONNX_FILE
    onnx.save(build_tiny_translator(image_size, channels), onnx_path)
    Manifest(
        name=name,
        version=version,
        created_at=utc_now(),
        description="tiny test translator",
        kind=IMAGE_TO_IMAGE,
        nz=0,
        image_size=image_size,
        channels=channels,
        inputs=expected_translation_inputs(image_size, channels),
        outputs=expected_outputs(image_size, channels),
        translation=TranslationSpec(domain_a="dark", domain_b="light"),
        artifact=ArtifactSpec(sha256=sha256_file(onnx_path), opset=OPSET),
    ).save(directory)
    return directory
