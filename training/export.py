"""Export a trained generator to ONNX plus its manifest in ``model_store/<name>/<version>/``.

The exported graph is exactly what the service runs: ``z`` float32 [N, nz] (and ``label``
int64 [N] for conditional models) in, ``image`` uint8 [N, H, W, C] out. The tanh-to-pixel
conversion and the channels-last transpose live inside the graph, so the service never
handles float pixels. BatchNorm is folded into the preceding ConvTranspose weights first,
which removes a whole op per layer at serving time and makes the graph independent of
train/eval mode.

Nothing is written unless ONNX Runtime reproduces PyTorch within one intensity level.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

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
    latents_from_seeds,
    next_version,
    sha256_file,
    utc_now,
    valid_name,
    version_dirs,
)
from training.cli import model_name
from training.model import Generator, ModelConfig, build_models

OPSET = 17
PARITY_SAMPLES = 256
PARITY_TOLERANCE = 1  # intensity levels on the 0..255 scale


class ExportParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance; nothing was written."""


# --- graph preparation -------------------------------------------------------------------


def fold_batchnorm(generator: Generator) -> Generator:
    """Return an eval-mode copy of ``generator`` whose BatchNorm layers are folded away.

    A ConvTranspose2d weight has shape [in, out, kH, kW] and BatchNorm normalises the ``out``
    channels, so each output channel's weights are scaled by gamma / sqrt(var + eps) and the
    shift beta - mean * scale becomes the (new) convolution bias.
    """
    folded = copy.deepcopy(generator).eval()
    layers = list(folded.main)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.ConvTranspose2d) and isinstance(nxt, nn.BatchNorm2d):
            out.append(_fold_pair(layer, nxt))
            i += 2
        else:
            out.append(layer)
            i += 1
    folded.main = nn.Sequential(*out)
    return folded


def _fold_pair(conv: nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.ConvTranspose2d:
    if conv.groups != 1:
        raise ValueError("BatchNorm folding supports ungrouped ConvTranspose2d only")
    with torch.no_grad():
        w = conv.weight.double()  # [in, out, kH, kW]
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # [out]
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = bn.bias.double() + (bias - bn.running_mean.double()) * scale
        fused = nn.ConvTranspose2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.output_padding,
            bias=True,
            dilation=conv.dilation,
        )
        fused.weight.copy_((w * scale[None, :, None, None]).float())
        fused.bias.copy_(new_bias.float())
    return fused.eval()


def tanh_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, C, S, S] in [-1, 1] -> [N, S, S, C] uint8: (x + 1) * 127.5, rounded and clamped."""
    pixels = torch.clamp(torch.round((images + 1.0) * 127.5), 0.0, 255.0)
    return pixels.permute(0, 2, 3, 1).to(torch.uint8)  # N x S x S x C


class ServingGenerator(nn.Module):
    """The graph that gets exported: latent (+ label) in, channels-last uint8 pixels out."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator
        self.conditional = generator.cfg.num_classes > 0

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        images = self.generator(z, label if self.conditional else None)  # N x C x S x S
        return tanh_to_uint8(images)  # N x S x S x C, uint8


# --- export ------------------------------------------------------------------------------


def _export_onnx(wrapper: ServingGenerator, cfg: ModelConfig, path: Path) -> None:
    example_z = torch.randn(2, cfg.nz)
    names = [LATENT_INPUT]
    args: tuple[torch.Tensor, ...] = (example_z,)
    dynamic_axes: dict[str, dict[int, str]] = {
        LATENT_INPUT: {0: "batch"},
        IMAGE_OUTPUT: {0: "batch"},
    }
    if wrapper.conditional:
        args = (example_z, torch.zeros(2, dtype=torch.int64))
        names.append(LABEL_INPUT)
        dynamic_axes[LABEL_INPUT] = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deliberate: it is fast and stable for this plain graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=[IMAGE_OUTPUT],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def check_graph(path: Path) -> int:
    """Validate the ONNX file and confirm no BatchNormalization survived; return its opset."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    kinds = {node.op_type for node in model.graph.node}
    if "BatchNormalization" in kinds:
        raise ExportParityError("the exported graph still contains BatchNormalization nodes")
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def parity_check(
    reference: Generator,
    onnx_path: Path,
    cfg: ModelConfig,
    *,
    samples: int = PARITY_SAMPLES,
    truncation: TruncationSpec | None = None,
) -> int:
    """Run ``samples`` random latents through PyTorch and ONNX Runtime; return the max
    abs pixel difference, raising :class:`ExportParityError` above the tolerance. A model with
    resample truncation is checked on the latents the service draws for seeds 0..samples-1."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(samples, cfg.nz, generator=gen)
    if truncation is not None:
        z = torch.from_numpy(latents_from_seeds(range(samples), cfg.nz, truncation.threshold))
    labels = (
        torch.randint(0, cfg.num_classes, (samples,), generator=gen) if cfg.num_classes else None
    )
    with torch.no_grad():
        expected = tanh_to_uint8(reference.eval()(z, labels)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {LATENT_INPUT: z.numpy()}
    if labels is not None:
        feeds[LABEL_INPUT] = labels.numpy()
    (actual,) = session.run([IMAGE_OUTPUT], feeds)
    if actual.dtype != np.uint8 or actual.shape != expected.shape:
        raise ExportParityError(
            f"ONNX output is {actual.dtype}{list(actual.shape)}, "
            f"expected uint8{list(expected.shape)}"
        )
    diff = int(np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max())
    if diff > PARITY_TOLERANCE:
        raise ExportParityError(
            f"ONNX Runtime differs from PyTorch by {diff} intensity levels "
            f"(tolerance {PARITY_TOLERANCE}) on {samples} random latents"
        )
    return diff


def export_generator(
    generator: Generator,
    cfg: ModelConfig,
    store: str | Path,
    name: str,
    *,
    version: int | None = None,
    class_names: list[str] | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    description: str = "",
    family: str = "dcgan",
) -> Path:
    """Export ``generator`` (of the GAN ``family``) to ``store/name/<version>/`` and return
    that directory. The version directory appears in one rename, fully written, or not at all.
    """
    from training.families import get_family

    model_dir = Path(store) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    final_dir = model_dir / str(version)
    if final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists; pick another version")
    if cfg.num_classes and not class_names:
        class_names = [str(i) for i in range(cfg.num_classes)]
    generator = generator.eval()
    family_spec = get_family(family)
    folded = family_spec.serving_generator(generator)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    try:
        onnx_path = tmp_dir / ONNX_FILE
        _export_onnx(ServingGenerator(folded), cfg, onnx_path)
        opset = check_graph(onnx_path)
        max_diff = parity_check(generator, onnx_path, cfg, truncation=family_spec.truncation)
        manifest = Manifest(
            name=name,
            version=version,
            created_at=utc_now(),
            description=description,
            family=family_spec.name,
            paper=family_spec.paper,
            nz=cfg.nz,
            image_size=cfg.image_size,
            channels=cfg.channels,
            num_classes=cfg.num_classes,
            class_names=list(class_names or []),
            inputs=expected_inputs(cfg.nz, cfg.num_classes),
            outputs=expected_outputs(cfg.image_size, cfg.channels),
            artifact=ArtifactSpec(file=ONNX_FILE, sha256=sha256_file(onnx_path), opset=opset),
            training={
                "model_config": cfg.to_dict(),
                **(training or {}),
                "export": {"parity_max_abs_diff": max_diff, "parity_samples": PARITY_SAMPLES},
            },
            evaluation=evaluation or {},
            truncation=family_spec.truncation,
        )
        manifest.save(tmp_dir)
        os.chmod(tmp_dir, 0o755)
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def _jsonable(value: Any) -> Any:
    """Keep only JSON-friendly values of a training config (paths become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def export_checkpoint(
    ckpt_path: str | Path,
    store: str | Path,
    name: str,
    *,
    version: int | None = None,
    use_ema: bool = True,
    description: str = "",
    extra_training: dict[str, Any] | None = None,
) -> Path:
    """Export the (EMA) generator of a training checkpoint, recording its training config."""
    from training.checkpoint import generator_from_checkpoint

    generator, cfg, ckpt = generator_from_checkpoint(ckpt_path, use_ema=use_ema)
    family = ckpt.get("family", "dcgan")
    history = ckpt.get("history") or []
    training = {
        "train_config": _jsonable(ckpt.get("train_config", {})),
        "epochs": ckpt.get("epoch"),
        "steps": ckpt.get("step"),
        "elapsed_s": ckpt.get("elapsed_s"),
        "weights": "ema" if use_ema and ckpt.get("generator_ema") is not None else "raw",
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "final_losses": _jsonable(history[-1]) if history else None,
        **(extra_training or {}),
    }
    return export_generator(
        generator,
        cfg,
        store,
        name,
        version=version,
        class_names=list(ckpt.get("class_names") or []),
        training=training,
        description=description,
        family=family,
    )


def export_random_generator(
    store: str | Path, name: str, cfg: ModelConfig, seed: int = 0, version: int | None = None
) -> Path:
    """Export a randomly initialised DCGAN generator: a real-shaped model in seconds, for tests
    and benchmarks that need the true graph but not trained weights."""
    torch.manual_seed(seed)
    generator, _ = build_models(cfg)
    # Fresh BatchNorm statistics (mean 0, var 1) would make folding trivial; give them
    # non-trivial values so the folded graph is exercised for real.
    gen = torch.Generator().manual_seed(seed + 1)
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return export_generator(
        generator,
        cfg,
        store,
        name,
        version=version,
        training={"random_init_seed": seed},
        description="randomly initialised generator (untrained)",
    )


# --- naming: never take over another model's name --------------------------------------------


class NameTakenError(FileExistsError):
    """The model name belongs to versions trained by another run."""


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The training run folder of ``<run>/checkpoints/<file>.pt`` (else the file's folder)."""
    path = Path(ckpt_path)
    parent = path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def model_name_from_run(ckpt_path: str | Path) -> str:
    """A model name from the run folder's name: lower case, other characters become '-'."""
    raw = run_dir_of(ckpt_path).resolve().name.lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-._")
    if not valid_name(name):
        raise ValueError(f"cannot make a model name from {raw!r}; pass --name")
    return name


def _lineage(train_config: dict[str, Any]) -> str:
    """The run a version was trained by: its run folder as recorded at training time."""
    return os.path.normpath(str(train_config.get("out_dir", "")))


def check_name_free(
    store: str | Path, name: str, train_config: dict[str, Any], *, force: bool = False
) -> None:
    """Refuse to add a version to ``name`` when its versions came from another training run.

    A new version of a name is what ``gan-serve`` serves from then on, so it must be the same
    lineage (same run folder) or an explicit ``force``.
    """
    existing = version_dirs(Path(store) / name)
    if not existing or force:
        return
    latest = Manifest.load(existing[max(existing)])
    theirs = _lineage(latest.training.get("train_config", {}))
    if theirs != _lineage(train_config):
        raise NameTakenError(
            f"{Path(store) / name} already holds versions trained by {theirs}, not by this "
            f"run; pass --name NEW for a new model, or --force to add version "
            f"{max(existing) + 1}, which gan-serve then serves instead"
        )


def describe_serving(version_dir: Path) -> str:
    """What ``gan-serve`` will serve from this store for the exported model's name."""
    m = Manifest.load(version_dir)
    versions = version_dirs(version_dir.parent)
    served = max(versions)
    if served == m.version:
        return (
            f"gan-serve --store {version_dir.parent.parent} serves model {m.name!r} version "
            f"{m.version} from {version_dir}"
        )
    return (
        f"gan-serve --store {version_dir.parent.parent} serves model {m.name!r} version "
        f"{served} (its highest); this version {m.version} is at {version_dir}"
    )


# --- command line: gan-train export --------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.pt)")
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="model store root")
    parser.add_argument(
        "--name",
        type=model_name,
        default=None,
        help="model name in the store (default: the run folder's name)",
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: the next free one)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="add a version to a name whose versions another run trained",
    )
    parser.add_argument("--raw", action="store_true", help="export raw weights, not the EMA copy")
    parser.add_argument("--description", default="", help="free text for the manifest")


def run(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint

    name = args.name or model_name_from_run(args.checkpoint)
    ckpt = load_checkpoint(args.checkpoint)
    check_name_free(args.store, name, ckpt.get("train_config", {}), force=args.force)
    out = export_checkpoint(
        args.checkpoint,
        args.store,
        name,
        version=args.version,
        use_ema=not args.raw,
        description=args.description,
    )
    print(f"exported {out}")
    print(describe_serving(out))
    return 0
