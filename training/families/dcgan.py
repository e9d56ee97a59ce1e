"""DCGAN (Radford et al., 2015), optionally class-conditional: the family's losses.

The model is :mod:`training.model`. Losses: the non-saturating GAN loss with BCE on logits,
one-sided label smoothing of the real targets (``label_smoothing``), and the mode-seeking
term of Mao et al. (2019, ``mode_seeking``) on the generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.families import Batch, Family, StepState
from training.model import Generator, ModelConfig, build_models

if TYPE_CHECKING:
    from training.loop import TrainConfig


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, half: int) -> torch.Tensor:
    """1 / (image distance / latent distance) over pairs (i, half + i) (Mao et al., MSGAN).

    Small when different latents give different images: it pushes G away from ignoring z,
    the conditional GAN's usual collapse to one image per class.
    """
    d_img = (fake[:half].float() - fake[half : 2 * half].float()).abs().mean()
    d_z = (z[:half] - z[half : 2 * half]).abs().mean()
    return 1.0 / (d_img / d_z + 1e-5)


class DCGAN(Family):
    name = "dcgan"
    paper = (
        "Radford, Metz and Chintala 2015, Unsupervised Representation Learning with Deep "
        "Convolutional Generative Adversarial Networks (arXiv:1511.06434)"
    )
    description = "DCGAN generator"

    def __init__(self) -> None:
        self.bce = nn.BCEWithLogitsLoss()

    def model_config(self, train_cfg: TrainConfig, channels: int, num_classes: int) -> ModelConfig:
        return ModelConfig(
            image_size=train_cfg.image_size,
            channels=channels,
            nz=train_cfg.nz,
            ngf=train_cfg.ngf,
            ndf=train_cfg.ndf,
            num_classes=num_classes,
        )

    def config_from_dict(self, data: dict[str, Any]) -> ModelConfig:
        return ModelConfig(**data)

    def build(self, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        return build_models(cfg)

    def new_generator(self, cfg: ModelConfig) -> nn.Module:
        return Generator(cfg)

    def d_loss(
        self, g: nn.Module, d: nn.Module, batch: Batch, train_cfg: TrainConfig
    ) -> tuple[torch.Tensor, StepState]:
        """maximise log D(x) + log(1 - D(G(z))), real targets smoothed one-sidedly."""
        n, dev = batch.real.shape[0], batch.real.device
        real_target = torch.full((n,), train_cfg.label_smoothing, device=dev)
        fake_target = torch.zeros(n, device=dev)
        half = n // 2 if train_cfg.mode_seeking > 0 else 0
        cond, fake_cond = batch.labels, batch.labels
        if half and cond is not None:
            # pairs (i, half + i) share a label, so the mode-seeking term compares like with like
            fake_cond = cond.clone()
            fake_cond[half : 2 * half] = cond[:half]
        fake = g(batch.z, fake_cond)  # C x S x S
        logit_real = d(batch.real, cond)
        logit_fake = d(fake.detach(), fake_cond)
        loss_d = self.bce(logit_real.float(), real_target) + self.bce(
            logit_fake.float(), fake_target
        )
        stats = {
            "d_real": torch.sigmoid(logit_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logit_fake.detach().float()).mean(),
        }
        return loss_d, StepState(fake, fake_cond, stats, {"half": half})

    def g_loss(
        self, d: nn.Module, batch: Batch, state: StepState, train_cfg: TrainConfig
    ) -> torch.Tensor:
        """Non-saturating: maximise log D(G(z)), plus the mode-seeking term."""
        logit_gen = d(state.fake, state.fake_labels)
        ones = torch.ones(logit_gen.shape[0], device=logit_gen.device)
        loss_g = self.bce(logit_gen.float(), ones)
        half = state.extra["half"]
        if half:
            loss_g = loss_g + train_cfg.mode_seeking * mode_seeking_loss(state.fake, batch.z, half)
        return loss_g

    def serving_generator(self, g: nn.Module) -> nn.Module:
        from training.export import fold_batchnorm

        return fold_batchnorm(g)
