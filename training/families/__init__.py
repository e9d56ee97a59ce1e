"""GAN families: each is a model plus its losses; the loop, checkpoints, EMA, logging and DDP
are shared (:mod:`training.loop`).

The family interface
--------------------
A family is a subclass of :class:`Family` registered in :data:`FAMILIES` under its ``name``.
It provides:

- ``name``, ``paper`` (the paper it follows, written into the manifest) and ``description``;
- ``truncation``: how the service truncates its seeds' latents (a manifest
  :class:`~service.manifest.TruncationSpec`), None for the plain psi scaling;
- ``model_config(train_cfg, channels, num_classes)``: its model config dataclass for a run. Every
  config has ``image_size``, ``channels``, ``nz``, ``num_classes`` and ``to_dict()``, and the
  generator keeps it as ``g.cfg`` (the grid, the EMA calibration and the exporter read it);
- ``config_from_dict(d)``: the config back from a checkpoint's ``model_config``;
- ``build(cfg) -> (G, D)``: freshly initialised models (the loop seeds torch first);
  ``new_generator(cfg)``: an empty generator to load a checkpoint into;
- ``init_from_data(g, d, images)``: data-dependent initialisation right after ``build``, with
  no random draws (nothing by default);
- ``optimizers(g, d, train_cfg) -> (opt_g, opt_d)``: Adam with the run's ``lr`` and betas by
  default;
- ``d_loss(g, d, batch, train_cfg) -> (loss_d, state)``: the discriminator's loss for one batch,
  with ``g`` and ``d`` possibly DDP-wrapped; ``state`` (a :class:`StepState`) carries the fakes
  and whatever the generator step reuses, and ``state.stats`` the scalars to log;
- ``g_loss(d, batch, state, train_cfg) -> loss_g``: the generator's loss, with ``d`` unwrapped
  and frozen (so DDP's reducer stays out of G's backward pass);
- ``serving_generator(g)``: an eval-mode module for export, ``z [N, nz]`` (and ``label [N]``)
  to images ``[N, C, S, S]`` in [-1, 1] (e.g. with BatchNorm folded away).

Per step the loop draws ``z`` (``torch.randn(N, nz)``), then runs: zero D's gradients, ``d_loss``,
backward, D's optimiser step; zero G's gradients, freeze D, ``g_loss``, backward, G's optimiser
step; then the EMA update. The generator's output range is tanh's, [-1, 1], as the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from service.manifest import TruncationSpec

if TYPE_CHECKING:
    from training.loop import TrainConfig


@dataclass
class Batch:
    """One training step's inputs, on the run's device."""

    real: torch.Tensor  # N x C x S x S in [-1, 1]
    labels: torch.Tensor | None  # N int64 class ids, None for an unconditional model
    z: torch.Tensor  # N x nz latents
    step: int = 0  # steps completed before this one (ProGAN's growth schedule reads it)


@dataclass
class StepState:
    """What the D step hands to the G step: the fakes, their labels, and the stats to log."""

    fake: torch.Tensor
    fake_labels: torch.Tensor | None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Family:
    """Base class of a GAN family; see the module docstring for the contract."""

    name: str = ""
    paper: str = ""
    description: str = ""
    truncation: TruncationSpec | None = None

    def model_config(self, train_cfg: TrainConfig, channels: int, num_classes: int) -> Any:
        raise NotImplementedError

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def build(self, cfg: Any) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def new_generator(self, cfg: Any) -> nn.Module:
        raise NotImplementedError

    def init_from_data(self, g: nn.Module, d: nn.Module, images: torch.Tensor) -> None:
        """Set weights from the training images [N, C, S, S] in [-1, 1]; no random draws."""

    def optimizers(
        self, g: nn.Module, d: nn.Module, train_cfg: TrainConfig
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        betas = (train_cfg.beta1, train_cfg.beta2)
        return (
            torch.optim.Adam(g.parameters(), lr=train_cfg.lr, betas=betas),
            torch.optim.Adam(d.parameters(), lr=train_cfg.lr_d or train_cfg.lr, betas=betas),
        )

    def d_loss(
        self, g: nn.Module, d: nn.Module, batch: Batch, train_cfg: TrainConfig
    ) -> tuple[torch.Tensor, StepState]:
        raise NotImplementedError

    def g_loss(
        self, d: nn.Module, batch: Batch, state: StepState, train_cfg: TrainConfig
    ) -> torch.Tensor:
        raise NotImplementedError

    def serving_generator(self, g: nn.Module) -> nn.Module:
        return g.eval()


def _registry() -> dict[str, Family]:
    from training.families.biggan import BigGAN
    from training.families.dcgan import DCGAN
    from training.families.gan2014 import GAN2014
    from training.families.progan import ProGAN

    return {f.name: f for f in (DCGAN(), GAN2014(), ProGAN(), BigGAN())}


# the names ``gan-train train --family`` accepts
FAMILIES: tuple[str, ...] = ("dcgan", "gan2014", "progan", "biggan")


def get_family(name: str) -> Family:
    """The registered family called ``name``."""
    families = _registry()
    if name not in families:
        raise ValueError(f"unknown GAN family {name!r}; known: {', '.join(sorted(families))}")
    return families[name]
