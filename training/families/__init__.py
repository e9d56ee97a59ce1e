"""GAN families beyond the DCGAN: each module holds its networks, losses and one training step.

:data:`FAMILIES` maps a family name to how to rebuild its generator from a checkpoint's
``model_config``; the exporter and the evaluation use it, so a checkpoint names its family
and nothing else needs to know the architectures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from service.manifest import TruncationSpec


@dataclass(frozen=True)
class FamilySpec:
    module: str  # under training.families
    config: str  # the model config dataclass
    step: str  # the training-step class
    settings: str  # its settings dataclass


FAMILIES: dict[str, FamilySpec] = {
    "progan": FamilySpec("progan", "ProGANConfig", "ProGANStep", "ProGANTrainSettings"),
    "biggan": FamilySpec("biggan", "BigGANConfig", "BigGANStep", "BigGANTrainSettings"),
}


def family_module(name: str) -> Any:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(f"training.families.{FAMILIES[name].module}")


def model_config(name: str, data: dict[str, Any]) -> Any:
    return getattr(family_module(name), FAMILIES[name].config)(**data)


def build_generator(name: str, config: dict[str, Any]) -> nn.Module:
    """An untrained generator of family ``name`` for a checkpoint's ``model_config``."""
    return family_module(name).Generator(model_config(name, config))


DCGAN_PAPER = (
    "Radford, Metz, Chintala. Unsupervised Representation Learning with Deep Convolutional "
    "Generative Adversarial Networks (ICLR 2016), arXiv:1511.06434"
)


@dataclass
class CheckpointGenerator:
    """A checkpoint's generator (eval mode) with what the manifest says of its family."""

    name: str
    paper: str
    truncation: TruncationSpec | None
    generator: nn.Module
    config: Any
    checkpoint: dict[str, Any]


def family_of_checkpoint(path: str | Path, use_ema: bool = True) -> CheckpointGenerator:
    """Load the (EMA) generator of any checkpoint: a family's when it names one, else DCGAN."""
    from training.train import generator_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path)
    name = ckpt.get("family") or "dcgan"
    if name == "dcgan":
        g, cfg, ckpt = generator_from_checkpoint(path, use_ema=use_ema)
        return CheckpointGenerator(name, DCGAN_PAPER, None, g, cfg, ckpt)
    module = family_module(name)
    cfg = model_config(name, ckpt["model_config"])
    g = module.Generator(cfg)
    state = ckpt["generator_ema"] if use_ema and ckpt.get("generator_ema") else ckpt["generator"]
    g.load_state_dict(state)
    g.eval()
    return CheckpointGenerator(name, module.PAPER, module.TRUNCATION, g, cfg, ckpt)
