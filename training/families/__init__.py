"""GAN families beyond the DCGAN: each module holds its networks, losses and one training step.

:data:`FAMILIES` maps a family name to how to rebuild its generator from a checkpoint's
``model_config``; the exporter and the evaluation use it, so a checkpoint names its family
and nothing else needs to know the architectures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn


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
