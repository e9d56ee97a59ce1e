"""DCGAN generator and discriminator (Radford et al., 2015), optionally class-conditional.

The whole model lives in this file. Shapes are written as ``channels x height x width``
for one sample; ``S`` is the image size and ``C`` the image channels.

Conditioning: G gets a learned label embedding concatenated to z; D gets a learned
label embedding reshaped to one extra S x S input plane.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
IMAGE_SIZE_HELP = f"a power of two from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"


@dataclass
class ModelConfig:
    image_size: int = 32  # S: a power of two, 16 to 256
    channels: int = 1  # C: 1 (grayscale) or 3 (RGB)
    nz: int = 100  # latent size
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    num_classes: int = 0  # 0 for an unconditional GAN
    embed_dim: int = 50  # size of G's label embedding

    def __post_init__(self) -> None:
        s = self.image_size
        if s < MIN_IMAGE_SIZE or s > MAX_IMAGE_SIZE or s & (s - 1):
            raise ValueError(f"image_size must be {IMAGE_SIZE_HELP}, got {s}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.num_classes < 0:
            raise ValueError("num_classes must be >= 0")

    @property
    def n_up(self) -> int:
        """Number of 2x upsampling stages from 4 x 4 to S x S."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)


def weights_init(module: nn.Module) -> None:
    """N(0, 0.02) for conv weights, N(1, 0.02) for BatchNorm scales, as in the DCGAN paper."""
    name = module.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 1.0)


class Generator(nn.Module):
    """z [N, nz] (+ label [N]) -> image [N, C, S, S] in tanh range [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        in_dim = cfg.nz
        if cfg.num_classes:
            self.label_embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
            in_dim += cfg.embed_dim
        mult = 2 ** (cfg.n_up - 1)  # 4 for S=32, 8 for S=64
        layers: list[nn.Module] = [
            # input: (nz [+ embed_dim]) x 1 x 1
            nn.ConvTranspose2d(in_dim, cfg.ngf * mult, 4, 1, 0, bias=False),
            nn.BatchNorm2d(cfg.ngf * mult),
            nn.ReLU(True),
            # (ngf*mult) x 4 x 4
        ]
        size = 4
        while mult > 1:
            layers += [
                nn.ConvTranspose2d(cfg.ngf * mult, cfg.ngf * mult // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cfg.ngf * mult // 2),
                nn.ReLU(True),
                # (ngf*mult/2) x (2*size) x (2*size): e.g. (ngf*2) x 8 x 8, then ngf x 16 x 16
            ]
            mult //= 2
            size *= 2
        layers += [
            nn.ConvTranspose2d(cfg.ngf, cfg.channels, 4, 2, 1, bias=False),
            # C x S x S
            nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = z
        if self.cfg.num_classes:
            if label is None:
                raise ValueError("a conditional generator needs labels")
            x = torch.cat([z, self.label_embed(label)], dim=1)  # (nz+embed_dim)
        return self.main(x[:, :, None, None])  # C x S x S


class Discriminator(nn.Module):
    """image [N, C, S, S] (+ label [N]) -> one logit per image [N]; no sigmoid (BCE with logits)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        in_ch = cfg.channels
        if cfg.num_classes:
            self.label_plane = nn.Embedding(cfg.num_classes, cfg.image_size * cfg.image_size)
            in_ch += 1
        layers: list[nn.Module] = [
            # input: (C [+1]) x S x S
            nn.Conv2d(in_ch, cfg.ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # ndf x S/2 x S/2
        ]
        mult = 1
        for _ in range(cfg.n_up - 1):
            layers += [
                nn.Conv2d(cfg.ndf * mult, cfg.ndf * mult * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cfg.ndf * mult * 2),
                nn.LeakyReLU(0.2, inplace=True),
                # (ndf*2*mult) x half the previous size: e.g. (ndf*2) x 8 x 8, (ndf*4) x 4 x 4
            ]
            mult *= 2
        layers += [
            nn.Conv2d(cfg.ndf * mult, 1, 4, 1, 0, bias=False),
            # 1 x 1 x 1
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = image
        if self.cfg.num_classes:
            if label is None:
                raise ValueError("a conditional discriminator needs labels")
            s = self.cfg.image_size
            plane = self.label_plane(label).view(-1, 1, s, s)  # 1 x S x S
            x = torch.cat([image, plane], dim=1)  # (C+1) x S x S
        return self.main(x).view(-1)  # one logit per image


def build_models(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(weights_init)
    d.apply(weights_init)
    return g, d
