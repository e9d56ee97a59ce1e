"""Export a CycleGAN checkpoint as one image-to-image ONNX graph in the model store.

One graph holds both directions (:class:`training.families.cyclegan.Translator`): ``source``
uint8 [N, S, S, C] and ``direction`` int64 [N] (0: A->B, 1: B->A) in, ``image`` uint8
[N, S, S, C] out. One file means one checksum, one version and one hot swap for both
directions, and the service's batcher can put requests of both directions in one batch, the
direction travelling like a generator's class label. Nothing is written unless ONNX Runtime
reproduces PyTorch within one intensity level on held-out images of both domains.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    next_version,
    sha256_file,
    utc_now,
)
from training.cli import model_name
from training.export import OPSET, PARITY_TOLERANCE, ExportParityError, check_graph
from training.families.cyclegan import PAPER, Translator

PARITY_SAMPLES = 128  # 64 held-out images of each domain, each run in both directions


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """[N, C, S, S] in [-1, 1] -> uint8 [N, S, S, C], the service's pixels."""
    pixels = torch.clamp(torch.round((images + 1.0) * 127.5), 0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _export_onnx(translator: Translator, image_size: int, channels: int, path: Path) -> None:
    source = torch.zeros(2, image_size, image_size, channels, dtype=torch.uint8)
    direction = torch.tensor([0, 1], dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            translator,
            (source, direction),
            str(path),
            input_names=[SOURCE_INPUT, DIRECTION_INPUT],
            output_names=[IMAGE_OUTPUT],
            dynamic_axes={
                SOURCE_INPUT: {0: "batch"},
                DIRECTION_INPUT: {0: "batch"},
                IMAGE_OUTPUT: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def parity_check(translator: Translator, onnx_path: Path, source: np.ndarray) -> int:
    """Run ``source`` (uint8 NHWC) both ways through PyTorch and ONNX Runtime; return the max
    abs pixel difference, raising :class:`ExportParityError` above the tolerance."""
    import onnxruntime as ort

    n = len(source)
    both = np.concatenate([source, source])
    direction = np.repeat(np.array([0, 1], np.int64), n)
    with torch.no_grad():
        expected = translator(torch.from_numpy(both), torch.from_numpy(direction)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([IMAGE_OUTPUT], {SOURCE_INPUT: both, DIRECTION_INPUT: direction})
    if actual.dtype != np.uint8 or actual.shape != expected.shape:
        raise ExportParityError(
            f"ONNX output is {actual.dtype}{list(actual.shape)}, "
            f"expected uint8{list(expected.shape)}"
        )
    diff = int(np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max())
    if diff > PARITY_TOLERANCE:
        raise ExportParityError(
            f"ONNX Runtime differs from PyTorch by {diff} intensity levels "
            f"(tolerance {PARITY_TOLERANCE}) on {len(both)} translations"
        )
    return diff


def export_translator(
    model: Any,
    store: str | Path,
    name: str,
    *,
    parity_source: np.ndarray,
    domain_a: str,
    domain_b: str,
    class_names: list[str] | None = None,
    training: dict[str, Any] | None = None,
    description: str = "",
    version: int | None = None,
) -> Path:
    """Write ``store/name/<version>/`` (graph + manifest) in one rename, or nothing."""
    cfg = model.cfg
    model_dir = Path(store) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    final_dir = model_dir / str(version)
    if final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists; pick another version")
    translator = Translator(model.g_ab, model.g_ba).eval()
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    try:
        onnx_path = tmp_dir / ONNX_FILE
        _export_onnx(translator, cfg.image_size, cfg.channels, onnx_path)
        opset = check_graph(onnx_path)
        max_diff = parity_check(translator, onnx_path, parity_source)
        manifest = Manifest(
            name=name,
            version=version,
            created_at=utc_now(),
            description=description,
            family="cyclegan",
            paper=PAPER,
            kind=IMAGE_TO_IMAGE,
            nz=0,
            image_size=cfg.image_size,
            channels=cfg.channels,
            num_classes=len(class_names or []),
            class_names=list(class_names or []),
            inputs=expected_translation_inputs(cfg.image_size, cfg.channels),
            outputs=expected_outputs(cfg.image_size, cfg.channels),
            translation=TranslationSpec(domain_a=domain_a, domain_b=domain_b),
            artifact=ArtifactSpec(file=ONNX_FILE, sha256=sha256_file(onnx_path), opset=opset),
            training={
                "model_config": cfg.to_dict(),
                **(training or {}),
                "export": {
                    "parity_max_abs_diff": max_diff,
                    "parity_samples": 2 * len(parity_source),
                },
            },
        )
        manifest.save(tmp_dir)
        os.chmod(tmp_dir, 0o755)
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def export_cyclegan(
    ckpt_path: str | Path, store: str | Path, name: str, *, command: str = ""
) -> Path:
    """Export a ``gan-train cyclegan`` checkpoint; parity on held-out images of both domains."""
    from training.cyclegan_train import CycleTrainConfig, load_cyclegan
    from training.domains import load_domain_pair
    from training.export import _jsonable

    model, ckpt = load_cyclegan(ckpt_path)
    train_cfg = CycleTrainConfig(**ckpt["train_config"])
    pair = load_domain_pair(
        train_cfg.data_a,
        train_cfg.data_b,
        train_cfg.image_size,
        train_cfg.channels,
        train_cfg.pair,  # the fonts pair (the default) for runs from before it was recorded
    )
    half = PARITY_SAMPLES // 4
    source = np.concatenate(
        [to_uint8_nhwc(pair.heldout_a.images[:half]), to_uint8_nhwc(pair.heldout_b.images[:half])]
    )
    history = ckpt.get("history") or []
    training = {
        "train_config": _jsonable(ckpt["train_config"]),
        "steps": ckpt.get("step"),
        "elapsed_s": ckpt.get("elapsed_s"),
        "cpu_s": ckpt.get("cpu_s"),
        "command": command,
        "checkpoint_sha256": sha256_file(ckpt_path),
        "final_losses": _jsonable(history[-1]) if history else None,
    }
    if ckpt.get("selection"):  # the step chosen on the validation split (--select-every)
        training["selection"] = _jsonable(ckpt["selection"])
    if ckpt.get("averaging"):  # the mean of the decay's weights (--average-every)
        training["averaging"] = _jsonable(ckpt["averaging"])
    domain_a, domain_b = ckpt.get("domains") or (pair.name_a, pair.name_b)
    return export_translator(
        model,
        store,
        name,
        parity_source=source,
        domain_a=domain_a,
        domain_b=domain_b,
        class_names=list(ckpt.get("class_names") or []) if pair.labelled else [],
        training=training,
        description=f"CycleGAN: {domain_a} <-> {domain_b}",
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a gan-train cyclegan run's checkpoints/last.pt")
    parser.add_argument("--store", default="model_store", help="the model store")
    parser.add_argument(
        "--name", type=model_name, default="mnist-fonts-cyclegan", help="model name in the store"
    )


def run(args: argparse.Namespace) -> int:
    command = "gan-train " + " ".join(sys.argv[1:])
    print(export_cyclegan(args.checkpoint, args.store, args.name, command=command))
    return 0
