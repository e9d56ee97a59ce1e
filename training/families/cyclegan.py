"""CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks"): two generators G_AB, G_BA and two discriminators D_A, D_B.

The generator is the paper's ResNet generator (Johnson et al. 2016) scaled to 32x32: a 7x7
stem, two stride-2 downsamplings, residual blocks at 8x8, two stride-2 upsamplings and a 7x7
tanh head, with instance norm and reflection padding. The discriminator is the paper's
PatchGAN (C64-C128-C256 with LeakyReLU 0.2, instance norm from the second block, one score
per patch) scaled to 32x32: one stride-2 4x4 block, then 3x3 stride-1 blocks, so each of its
16x16 scores judges a 16x16 patch (receptive field: :func:`receptive_field`). The paper's
70x70 patches cover 27% of a 256-pixel side; a 16x16 patch covers half of a 32-pixel digit
image (docs/TRAINING.md); ``d_downsample`` 2 or 3 widens it to 26x26 or the whole image.
The loss is least squares (LSGAN), D's targets 1 for real and 0 for
fake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

PAPER = "Zhu et al. 2017, Unpaired Image-to-Image Translation using Cycle-Consistent GANs"


@dataclass
class CycleGANConfig:
    """Model shape; the defaults are the shipped ``mnist-fonts-cyclegan``."""

    image_size: int = 32
    channels: int = 1
    ngf: int = 16  # generator width at full resolution (the paper: 64)
    ndf: int = 32  # discriminator width of its first block (the paper: 64)
    n_blocks: int = 3  # residual blocks at 8x8 (the paper: 6 at 128x128, 9 at 256x256)
    d_downsample: int = 1  # stride-2 blocks of D: 1, 2, 3 -> 16, 26, 38-pixel patches at 32x32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CycleGANConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class ResidualBlock(nn.Module):
    """x + conv-norm-relu-conv-norm(x), reflection padded (shape preserving)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),  # w x 8 x 8
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),  # w x 8 x 8
            nn.InstanceNorm2d(width, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """image [N, C, 32, 32] in [-1, 1] -> image [N, C, 32, 32] in [-1, 1]."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        self.cfg = cfg
        c, f = cfg.channels, cfg.ngf
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(c, f, 7, bias=False),  # f x 32 x 32
            nn.InstanceNorm2d(f, affine=True),
            nn.ReLU(True),
            nn.Conv2d(f, 2 * f, 3, 2, 1, bias=False),  # 2f x 16 x 16
            nn.InstanceNorm2d(2 * f, affine=True),
            nn.ReLU(True),
            nn.Conv2d(2 * f, 4 * f, 3, 2, 1, bias=False),  # 4f x 8 x 8
            nn.InstanceNorm2d(4 * f, affine=True),
            nn.ReLU(True),
            *[ResidualBlock(4 * f) for _ in range(cfg.n_blocks)],  # 4f x 8 x 8
            nn.ConvTranspose2d(4 * f, 2 * f, 3, 2, 1, output_padding=1, bias=False),  # 2f x 16²
            nn.InstanceNorm2d(2 * f, affine=True),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * f, f, 3, 2, 1, output_padding=1, bias=False),  # f x 32 x 32
            nn.InstanceNorm2d(f, affine=True),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(f, c, 7),  # c x 32 x 32
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """image [N, C, S, S] -> realness scores [N, 1, S / 2^d, S / 2^d], d = ``d_downsample``.

    ``d_downsample`` 1 (the default) scores 16x16 patches of a 32x32 image; 2 makes the
    second block stride 2 (26x26 patches, 8x8 scores); 3 the third too (the whole image, 4x4
    scores). The layer order is the same for all three, so the weights' names are.
    """

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        c, f = cfg.channels, cfg.ndf
        layers: list[nn.Module] = [
            nn.Conv2d(c, f, 4, 2, 1),  # f x S/2 x S/2
            nn.LeakyReLU(0.2, True),
        ]
        width = f
        for block in (1, 2):
            down = block < cfg.d_downsample
            layers += [
                # 2w x S/2^(block+1) when it downsamples, else the side unchanged
                nn.Conv2d(width, 2 * width, 4 if down else 3, 2 if down else 1, 1, bias=False),
                nn.InstanceNorm2d(2 * width, affine=True),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 3, 1, 1))  # 1 x S/2^d x S/2^d
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def receptive_field(module: nn.Module) -> int:
    """Side of the input patch one output of a stack of square convolutions sees."""
    side = 1
    for conv in reversed([m for m in module.modules() if isinstance(m, nn.Conv2d)]):
        side = side * conv.stride[0] + conv.kernel_size[0] - conv.stride[0]
    return side


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) weights, norm scales N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class CycleGAN(nn.Module):
    """The four networks of a run; ``g_ab`` maps domain A to B, ``g_ba`` B to A."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.g_ab = ResnetGenerator(cfg)
        self.g_ba = ResnetGenerator(cfg)
        self.d_a = PatchDiscriminator(cfg)
        self.d_b = PatchDiscriminator(cfg)
        init_weights(self)


class Translator(nn.Module):
    """The served graph: uint8 images [N, S, S, C] and a direction per image (0: A->B,
    1: B->A) -> uint8 images [N, S, S, C].

    Both generators run on the whole batch and a select keeps each image's direction, so one
    batch may mix directions: twice the arithmetic of one generator, which at 32x32 costs less
    than splitting batches by direction in the service would.
    """

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module):
        super().__init__()
        self.g_ab = g_ab.eval()
        self.g_ba = g_ba.eval()

    def forward(self, source: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        x = source.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # N x C x S x S in [-1, 1]
        to_b = self.g_ab(x)  # N x C x S x S
        to_a = self.g_ba(x)  # N x C x S x S
        pick = (direction == 0).view(-1, 1, 1, 1)
        images = torch.where(pick, to_b, to_a)
        pixels = torch.clamp(torch.round((images + 1.0) * 127.5), 0.0, 255.0)
        return pixels.permute(0, 2, 3, 1).to(torch.uint8)  # N x S x S x C
