"""Training checkpoints: written atomically, read back onto the CPU, the generator rebuilt.

A checkpoint is a ``torch.save`` dict with: ``family`` (the GAN family's name, ``dcgan`` when
absent), ``model_config``, ``train_config``, ``generator``, ``generator_ema`` (or None),
``discriminator``, ``opt_g``, ``opt_d``, ``scaler_g``, ``scaler_d``, ``epoch`` (completed),
``step``, ``class_names``, ``history`` (the metrics rows), ``trace`` (per-step losses),
``rng`` (every process's RNG state) and ``elapsed_s``. The exporter reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
REQUIRED_KEYS = ("model_config", "generator", "epoch", "step")


class CheckpointError(ValueError):
    """A file that is not a gan-train checkpoint, or one missing what the caller needs."""


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Atomic torch.save: a reader never sees half a file, a crash never loses the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (tensors, numbers, strings and lists only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run's checkpoints/last.pt"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file of the wrong format
        raise CheckpointError(
            f"{path} is not a gan-train checkpoint ({type(exc).__name__}); "
            "pass a run's checkpoints/last.pt"
        ) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a gan-train checkpoint (no {', '.join(missing)}); "
            "pass a run's checkpoints/last.pt"
        )
    return ckpt


def generator_from_checkpoint(
    path: str | Path, use_ema: bool = True
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The generator of a checkpoint in eval mode (the EMA copy when there is one and asked
    for), its family's model config, and the checkpoint dict."""
    from training.families import get_family

    ckpt = load_checkpoint(path)
    family = get_family(ckpt.get("family", "dcgan"))
    try:
        cfg = family.config_from_dict(ckpt["model_config"])
        g = family.new_generator(cfg)
        state = (
            ckpt["generator_ema"] if use_ema and ckpt.get("generator_ema") else ckpt["generator"]
        )
        g.load_state_dict(state)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its generator does not match its model_config ({type(exc).__name__}); "
            "was it written by another version of gan-train?"
        ) from exc
    g.eval()
    return g, cfg, ckpt
