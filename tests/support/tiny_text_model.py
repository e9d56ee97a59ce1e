"""A tiny text-to-image graph built with ``onnx.helper`` (no torch), its vocabulary and manifest.

``z`` float32 [N, nz] and ``tokens`` int64 [N, L] -> ``image``: every pixel of image i is
``clip(16 * sum(tokens[i]) + 8 * mean(z[i]) + 64, 0, 255)``, so a test can tell captions and
seeds apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import (
    IMAGE_OUTPUT,
    LATENT_INPUT,
    ONNX_FILE,
    TEXT_TO_IMAGE,
    TOKENS_INPUT,
    ArtifactSpec,
    Manifest,
    SideFile,
    TextSpec,
    expected_outputs,
    expected_text_inputs,
    sha256_file,
    utc_now,
)
from service.text import VOCABULARY_FILE, Vocabulary

OPSET = 17
WORDS = ("<pad>", "a", "thick", "thin", "one", "seven")


def tiny_pixels(z: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """What the tiny graph computes per image (uint8 [N]), for tests to compare against."""
    value = 16.0 * tokens.sum(1) + 8.0 * z.mean(1, dtype=np.float32) + 64.0
    return np.clip(np.round(value), 0, 255).astype(np.uint8)


def build_tiny_text_model(nz: int, max_tokens: int, size: int) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(16.0, np.float32), "k_tokens"),
        numpy_helper.from_array(np.array(8.0, np.float32), "k_z"),
        numpy_helper.from_array(np.array(64.0, np.float32), "offset"),
        numpy_helper.from_array(np.array(0.0, np.float32), "low"),
        numpy_helper.from_array(np.array(255.0, np.float32), "high"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "per_image"),
        numpy_helper.from_array(np.array([1, size, size, 1], np.int64), "full"),
    ]
    nodes = [
        helper.make_node("ReduceSum", [TOKENS_INPUT, "axis1"], ["token_sum"], keepdims=0),
        helper.make_node("Cast", ["token_sum"], ["token_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", [LATENT_INPUT], ["z_mean"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["token_f", "k_tokens"], ["a"]),
        helper.make_node("Mul", ["z_mean", "k_z"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "offset"], ["v"]),
        helper.make_node("Round", ["v"], ["r"]),
        helper.make_node("Clip", ["r", "low", "high"], ["c"]),
        helper.make_node("Cast", ["c"], ["u"], to=TensorProto.UINT8),
        helper.make_node("Reshape", ["u", "per_image"], ["u4"]),
        helper.make_node("Expand", ["u4", "full"], [IMAGE_OUTPUT]),
    ]
    inputs = [
        helper.make_tensor_value_info(LATENT_INPUT, TensorProto.FLOAT, ["N", nz]),
        helper.make_tensor_value_info(TOKENS_INPUT, TensorProto.INT64, ["N", max_tokens]),
    ]
    output = helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.UINT8, ["N", size, size, 1])
    graph = helper.make_graph(nodes, "tiny_text", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_text_model(
    store: Path, name: str = "words", nz: int = 4, max_tokens: int = 4, size: int = 8
) -> Path:
    """Write ``store/<name>/1/{generator.onnx, vocabulary.json, manifest.json}``."""
    directory = Path(store) / name / "1"
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / ONNX_FILE
    onnx.save(build_tiny_text_model(nz, max_tokens, size), onnx_path)
    vocab = Vocabulary(WORDS, max_tokens)
    vocab_path = vocab.save(directory)
    Manifest(
        name=name,
        version=1,
        created_at=utc_now(),
        description="tiny test text-to-image model",
        kind=TEXT_TO_IMAGE,
        nz=nz,
        image_size=size,
        channels=1,
        inputs=expected_text_inputs(nz, max_tokens, vocab.size),
        outputs=expected_outputs(size, 1),
        text=TextSpec(vocabulary=VOCABULARY_FILE, vocab_size=vocab.size, max_tokens=max_tokens),
        artifact=ArtifactSpec(sha256=sha256_file(onnx_path), opset=OPSET),
        side_files=[SideFile(file=VOCABULARY_FILE, sha256=sha256_file(vocab_path))],
    ).save(directory)
    return directory
