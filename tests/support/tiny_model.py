"""A tiny, valid generator built with ``onnx.helper`` (no torch), plus its manifest.

The graph honours the model contract (``z`` float32 [N, nz], ``label`` int64 [N] when
conditional, ``image`` uint8 [N, S, S, C]) and uses only element-wise ops and gathers, so a
sample's pixels never depend on the other samples in its batch. Pixels depend on ``z``, on the
label and on the version (weights are seeded by name and version), so tests can tell images,
labels and versions apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import (
    IMAGE_OUTPUT,
    LABEL_INPUT,
    LATENT_INPUT,
    ONNX_FILE,
    ArtifactSpec,
    Manifest,
    TruncationSpec,
    expected_inputs,
    expected_outputs,
    sha256_file,
    utc_now,
)

OPSET = 17


def build_tiny_graph(
    nz: int = 8,
    image_size: int = 8,
    channels: int = 1,
    num_classes: int = 10,
    seed: int = 0,
    work: int = 0,
) -> onnx.ModelProto:
    """Return the ONNX model; ``work`` chains that many extra Tanh ops to make inference slower."""
    pixels = image_size * image_size * channels
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.arange(pixels, dtype=np.int64) % nz, "pixel_to_latent"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, pixels).astype(np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(127.5, np.float32), "half_range"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(255.0, np.float32), "hi"),
        numpy_helper.from_array(
            np.array([-1, image_size, image_size, channels], np.int64), "image_shape"
        ),
    ]
    nodes = [
        # z [N, nz] -> [N, P]: each pixel reads one latent component
        helper.make_node("Gather", [LATENT_INPUT, "pixel_to_latent"], ["picked"], axis=1),
        helper.make_node("Mul", ["picked", "scale"], ["scaled"]),
    ]
    last = "scaled"
    inputs = [helper.make_tensor_value_info(LATENT_INPUT, TensorProto.FLOAT, ["N", nz])]
    if num_classes > 0:
        inits.append(
            numpy_helper.from_array(
                rng.uniform(-1.5, 1.5, (num_classes, pixels)).astype(np.float32), "label_embed"
            )
        )
        inputs.append(helper.make_tensor_value_info(LABEL_INPUT, TensorProto.INT64, ["N"]))
        nodes += [
            # label [N] -> [N, P]
            helper.make_node("Gather", ["label_embed", LABEL_INPUT], ["embedded"], axis=0),
            helper.make_node("Add", [last, "embedded"], ["conditioned"]),
        ]
        last = "conditioned"
    for i in range(work + 1):
        nodes.append(helper.make_node("Tanh", [last], [f"tanh{i}"]))
        last = f"tanh{i}"
    nodes += [
        # [-1, 1] -> [0, 255] -> uint8 [N, S, S, C]
        helper.make_node("Add", [last, "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half_range"], ["ranged"]),
        helper.make_node("Clip", ["ranged", "lo", "hi"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["flat"], to=TensorProto.UINT8),
        helper.make_node("Reshape", ["flat", "image_shape"], [IMAGE_OUTPUT]),
    ]
    output = helper.make_tensor_value_info(
        IMAGE_OUTPUT, TensorProto.UINT8, ["N", image_size, image_size, channels]
    )
    graph = helper.make_graph(nodes, "tiny_generator", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_model(
    store: Path,
    name: str = "tiny",
    version: int = 1,
    nz: int = 8,
    image_size: int = 8,
    channels: int = 1,
    num_classes: int = 10,
    work: int = 0,
    truncation: TruncationSpec | None = None,
) -> Path:
    """Write ``store/<name>/<version>/{generator.onnx, manifest.json}``; return that directory
    (``truncation``: a resample truncation spec, as BigGAN's manifests carry)."""
    directory = Path(store) / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(hashlib.sha256(f"{name}/{version}".encode()).digest()[:4], "little")
    model = build_tiny_graph(nz, image_size, channels, num_classes, seed=seed, work=work)
    onnx_path = directory / ONNX_FILE
    onnx.save(model, onnx_path)
    manifest = Manifest(
        name=name,
        version=version,
        created_at=utc_now(),
        description="tiny test generator",
        nz=nz,
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        class_names=[str(i) for i in range(num_classes)],
        inputs=expected_inputs(nz, num_classes),
        outputs=expected_outputs(image_size, channels),
        artifact=ArtifactSpec(sha256=sha256_file(onnx_path), opset=OPSET),
        evaluation={"note": "random weights"},
        truncation=truncation,
    )
    manifest.save(directory)
    return directory
