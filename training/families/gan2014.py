"""The original GAN (Goodfellow et al., 2014) and its conditional form (Mirza and Osindero,
2014): a multilayer-perceptron generator and a maxout discriminator with dropout.

Shapes are per sample; ``D = C * S * S`` is the flattened image, ``K`` the number of classes.

Unconditional (Goodfellow et al., MNIST): G is z -> ``width`` ReLU -> ``width`` ReLU -> D
sigmoid units; the discriminator is x -> maxout(``d_units`` x ``pieces``) -> maxout(``d_units`` x
``pieces``) -> one logit, with dropout on its input and hidden layers.

Conditional (Mirza and Osindero, MNIST): G maps z to a ReLU layer of ``width / 6`` units and
the one-hot label to one of ``5 * width / 6`` (200 and 1000 for width 1200), both to a joint
ReLU layer of ``width`` units, then D sigmoid units. D maps x to maxout(``d_units`` x ``pieces``),
the one-hot label to maxout(``d_units / 4.8`` x ``pieces``) (240 and 50 in the paper), both to a
joint maxout(``d_units`` x ``pieces - 1``), then one logit.

The sigmoid output s in [0, 1] is returned as 2 s - 1, the [-1, 1] range the shared loop,
the data and the exporter use. Loss: binary cross-entropy on D's logit, the non-saturating
generator loss (maximise log D(G(z))), real targets optionally smoothed (``label_smoothing``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from training.families import Batch, Family, StepState

if TYPE_CHECKING:
    from training.loop import TrainConfig


@dataclass
class MLPConfig:
    image_size: int = 32  # S
    channels: int = 1  # C
    nz: int = 100  # latent size
    num_classes: int = 0  # K; 0 for the unconditional GAN
    width: int = 1200  # generator hidden units (1200 in both papers)
    d_units: int = 240  # discriminator maxout units (240 in both papers)
    pieces: int = 5  # linear pieces per maxout unit
    d_input_dropout: float = 0.2  # dropout on D's input (keep probability 0.8)
    d_dropout: float = 0.5  # dropout on D's hidden layers

    def __post_init__(self) -> None:
        if self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two, got {self.image_size}")
        if self.channels not in (1, 3) or self.num_classes < 0 or self.pieces < 2:
            raise ValueError("channels must be 1 or 3, num_classes >= 0 and pieces >= 2")

    @property
    def pixels(self) -> int:
        return self.channels * self.image_size * self.image_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Maxout(nn.Module):
    """Linear to ``units * pieces`` outputs, then the max over each unit's pieces."""

    def __init__(self, in_features: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)  # units * pieces
        return out.view(-1, self.units, self.pieces).amax(dim=2)  # units


class MLPGenerator(nn.Module):
    """z [N, nz] (+ label [N]) -> image [N, C, S, S] in [-1, 1]."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.num_classes:
            z_units = w // 6
            self.z_layer = nn.Sequential(nn.Linear(cfg.nz, z_units), nn.ReLU())  # w/6
            self.y_layer = nn.Sequential(nn.Linear(cfg.num_classes, w - z_units), nn.ReLU())
            self.joint = nn.Sequential(nn.Linear(w, w), nn.ReLU())  # w
        else:
            self.joint = nn.Sequential(
                nn.Linear(cfg.nz, w),
                nn.ReLU(),
                # w
                nn.Linear(w, w),
                nn.ReLU(),
                # w
            )
        self.out = nn.Linear(w, cfg.pixels)  # C*S*S, then sigmoid

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.num_classes:
            if label is None:
                raise ValueError("a conditional generator needs labels")
            y = F.one_hot(label, cfg.num_classes).to(z.dtype)  # K
            h = torch.cat([self.z_layer(z), self.y_layer(y)], dim=1)  # w
        else:
            h = z
        s = torch.sigmoid(self.out(self.joint(h)))  # C*S*S in [0, 1]
        return (2.0 * s - 1.0).view(-1, cfg.channels, cfg.image_size, cfg.image_size)


class MaxoutDiscriminator(nn.Module):
    """image [N, C, S, S] (+ label [N]) -> one logit per image [N]."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        u, p = cfg.d_units, cfg.pieces
        self.drop_in = nn.Dropout(cfg.d_input_dropout)
        self.x_layer = Maxout(cfg.pixels, u, p)  # u
        if cfg.num_classes:
            y_units = max(1, round(u / 4.8))
            self.y_layer = Maxout(cfg.num_classes, y_units, p)  # u/4.8
            self.hidden = Maxout(u + y_units, u, p - 1)  # u
        else:
            self.hidden = Maxout(u, u, p)  # u
        self.drop = nn.Dropout(cfg.d_dropout)
        self.out = nn.Linear(u, 1)  # one logit

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        x = self.drop_in(image.reshape(image.shape[0], -1))  # C*S*S
        h = self.drop(self.x_layer(x))  # u
        if cfg.num_classes:
            if label is None:
                raise ValueError("a conditional discriminator needs labels")
            y = F.one_hot(label, cfg.num_classes).to(x.dtype)  # K
            h = torch.cat([h, self.drop(self.y_layer(y))], dim=1)  # u + u/4.8
        h = self.drop(self.hidden(h))  # u
        return self.out(h).view(-1)  # one logit per image


def init_weights(module: nn.Module) -> None:
    """Small uniform weights and zero biases, close to the papers' pylearn2 settings."""
    if isinstance(module, nn.Linear):
        nn.init.uniform_(module.weight, -0.05, 0.05)
        nn.init.zeros_(module.bias)


class GAN2014(Family):
    name = "gan2014"
    paper = (
        "Goodfellow et al. 2014, Generative Adversarial Nets (arXiv:1406.2661); conditional: "
        "Mirza and Osindero 2014, Conditional Generative Adversarial Nets (arXiv:1411.1784)"
    )
    description = "MLP generator (the 2014 GAN)"

    def __init__(self) -> None:
        self.bce = nn.BCEWithLogitsLoss()

    def model_config(self, train_cfg: TrainConfig, channels: int, num_classes: int) -> MLPConfig:
        return MLPConfig(
            image_size=train_cfg.image_size,
            channels=channels,
            nz=train_cfg.nz,
            num_classes=num_classes,
            width=train_cfg.ngf,
            d_units=train_cfg.ndf,
            d_input_dropout=train_cfg.d_input_dropout,
        )

    def config_from_dict(self, data: dict[str, Any]) -> MLPConfig:
        return MLPConfig(**data)

    def build(self, cfg: MLPConfig) -> tuple[nn.Module, nn.Module]:
        g, d = MLPGenerator(cfg), MaxoutDiscriminator(cfg)
        g.apply(init_weights)
        d.apply(init_weights)
        return g, d

    def new_generator(self, cfg: MLPConfig) -> nn.Module:
        return MLPGenerator(cfg)

    @torch.no_grad()
    def init_from_data(self, g: nn.Module, d: nn.Module, images: torch.Tensor) -> None:
        """The sigmoid output's bias from the pixels' marginals, logit(mean pixel), as in the
        paper's code: G starts at the mean image instead of flat grey, so D cannot win on
        the background alone."""
        mean = ((images.float() + 1.0) / 2.0).mean(dim=0).flatten().clamp(1e-3, 1.0 - 1e-3)
        g.out.bias.copy_(torch.log(mean / (1.0 - mean)))

    def d_loss(
        self, g: nn.Module, d: nn.Module, batch: Batch, train_cfg: TrainConfig
    ) -> tuple[torch.Tensor, StepState]:
        """maximise log D(x) + log(1 - D(G(z)))."""
        n, dev = batch.real.shape[0], batch.real.device
        fake = g(batch.z, batch.labels)  # C x S x S
        logit_real = d(batch.real, batch.labels)
        logit_fake = d(fake.detach(), batch.labels)
        real_target = torch.full((n,), train_cfg.label_smoothing, device=dev)
        loss_d = self.bce(logit_real.float(), real_target) + self.bce(
            logit_fake.float(), torch.zeros(n, device=dev)
        )
        stats = {
            "d_real": torch.sigmoid(logit_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logit_fake.detach().float()).mean(),
        }
        return loss_d, StepState(fake, batch.labels, stats)

    def g_loss(
        self, d: nn.Module, batch: Batch, state: StepState, train_cfg: TrainConfig
    ) -> torch.Tensor:
        """Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))."""
        logit_gen = d(state.fake, state.fake_labels)
        return self.bce(logit_gen.float(), torch.ones_like(logit_gen.float()))
