"""Progressive GAN (Karras et al., 2017), class-conditional, grown 4 -> 8 -> 16 -> 32.

The ingredients of the paper, at 32 x 32 on a CPU: progressive growing with a linear fade-in
of each new resolution (the real images are faded the same way), pixelwise feature
normalisation in G, a minibatch standard deviation channel in D, equalised learning rate
(weights drawn N(0, 1) and scaled by He's constant at run time), the WGAN-GP loss with the
drift term, and an EMA of G's weights. Shapes are ``channels x height x width`` per sample.

Conditioning: G's input is pixel-normalised ``concat(z, embed(label))``; D ends in a
projection term (Miyato & Koyama, 2018), ``<embed(label), features>`` added to its score.
The paper's networks are unconditional; the projection is the lightest way to add a label
that works with a Wasserstein critic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from training.families import Batch, Family, StepState

if TYPE_CHECKING:
    from training.loop import TrainConfig

FAMILY = "progan"
TRUNCATION = None  # seeds' latents are used as drawn
PAPER = "Karras, Aila, Laine, Lehtinen. Progressive Growing of GANs (ICLR 2018), arXiv:1710.10196"


@dataclass
class ProGANConfig:
    image_size: int = 32  # the last stage's resolution S
    channels: int = 1  # C
    nz: int = 128  # latent size
    num_classes: int = 10  # 0 for an unconditional GAN
    embed_dim: int = 32  # G's label embedding
    widths: tuple[int, ...] = (128, 128, 64, 32)  # feature maps at 4, 8, 16, 32

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if 4 * 2 ** (len(self.widths) - 1) != self.image_size:
            raise ValueError(
                f"widths gives {len(self.widths)} stages (4 x 4 up to "
                f"{4 * 2 ** (len(self.widths) - 1)}), but image_size is {self.image_size}"
            )

    @property
    def stages(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


# --- the paper's layers ------------------------------------------------------------------


class EqualizedConv2d(nn.Module):
    """Conv2d with weights N(0, 1) scaled by gain / sqrt(fan_in) at every call (equalised lr)."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Linear layer with the equalised learning rate of :class:`EqualizedConv2d`."""

    def __init__(self, fin: int, fout: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.scale = gain / math.sqrt(fin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit mean square (the paper's section 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the feature std over groups of samples, averaged (section 3)."""
    n, c, h, w = x.shape
    g = min(group, n)
    if n % g:
        g = 1
    y = x.reshape(g, -1, c, h, w)  # group x (N/group) x C x H x W
    y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)  # (N/group) x C x H x W
    y = y.mean(dim=(1, 2, 3), keepdim=True)  # (N/group) x 1 x 1 x 1
    y = y.repeat(g, 1, h, w)  # N x 1 x H x W
    return torch.cat([x, y], dim=1)  # (C+1) x H x W


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


# --- networks ----------------------------------------------------------------------------


class Generator(nn.Module):
    """z [N, nz] (+ label [N]) -> image [N, C, r, r] at stage ``stage`` (r = 4 * 2**stage).

    ``alpha`` < 1 fades the newest stage in: the output is a blend of the new block's image and
    the previous stage's image upsampled. Called with neither, it is the full-resolution,
    fully faded-in network (stage = last, alpha = 1): the one that gets exported.
    """

    def __init__(self, cfg: ProGANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        in_dim = cfg.nz + (cfg.embed_dim if cfg.num_classes else 0)
        if cfg.num_classes:
            self.label_embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        # (nz + embed) -> w0 x 4 x 4: the paper's 4 x 4 "dense" layer, then a 3x3 conv
        self.project = EqualizedLinear(in_dim, w[0] * 16, gain=math.sqrt(2) / 4)
        self.conv4 = EqualizedConv2d(w[0], w[0], 3)  # w0 x 4 x 4
        self.blocks = nn.ModuleList()
        for i in range(1, cfg.stages):
            self.blocks.append(
                nn.ModuleList(
                    [
                        EqualizedConv2d(w[i - 1], w[i], 3),  # w_i x 2r x 2r, after upsampling
                        EqualizedConv2d(w[i], w[i], 3),  # w_i x 2r x 2r
                    ]
                )
            )
        # one 1x1 "toRGB" per stage, linear output as in the paper: w_i -> C x r x r
        self.to_rgb = nn.ModuleList(EqualizedConv2d(wi, cfg.channels, 1, gain=1.0) for wi in w)

    def features(self, z: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        x = z
        if self.cfg.num_classes:
            if label is None:
                raise ValueError("a conditional generator needs labels")
            x = torch.cat([z, self.label_embed(label)], dim=1)  # (nz + embed)
        x = pixel_norm(x)
        x = self.project(x).view(-1, self.cfg.widths[0], 4, 4)  # w0 x 4 x 4
        x = pixel_norm(lrelu(x))
        return pixel_norm(lrelu(self.conv4(x)))  # w0 x 4 x 4

    def forward(
        self,
        z: torch.Tensor,
        label: torch.Tensor | None = None,
        stage: int | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        stage = self.cfg.stages - 1 if stage is None else stage
        x = self.features(z, label)  # w0 x 4 x 4
        previous = x
        for i in range(1, stage + 1):
            conv_a, conv_b = self.blocks[i - 1]
            previous = x
            x = upsample(x)  # w_{i-1} x 2r x 2r
            x = pixel_norm(lrelu(conv_a(x)))  # w_i x 2r x 2r
            x = pixel_norm(lrelu(conv_b(x)))  # w_i x 2r x 2r
        image = self.to_rgb[stage](x)  # C x r x r
        if stage > 0 and alpha < 1.0:
            old = upsample(self.to_rgb[stage - 1](previous))  # C x r x r
            image = torch.lerp(old, image, alpha)
        # linear output while training, as in the paper; the data's [-1, 1] range outside it
        return image if self.training else image.clamp(-1.0, 1.0)

    def for_export(self) -> nn.Module:
        """The serving network: the full-resolution generator, faded in, in eval mode."""
        return self.eval()


class Discriminator(nn.Module):
    """image [N, C, r, r] (+ label [N]) -> one Wasserstein score per image [N]."""

    def __init__(self, cfg: ProGANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.from_rgb = nn.ModuleList(EqualizedConv2d(cfg.channels, wi, 1) for wi in w)
        # blocks[i] takes stage i's resolution down to stage i-1's: w_i x r x r -> w_{i-1} x r/2
        self.blocks = nn.ModuleList([nn.Identity()])
        for i in range(1, cfg.stages):
            self.blocks.append(
                nn.ModuleList([EqualizedConv2d(w[i], w[i], 3), EqualizedConv2d(w[i], w[i - 1], 3)])
            )
        self.conv4 = EqualizedConv2d(w[0] + 1, w[0], 3)  # (w0 + stddev) x 4 x 4 -> w0 x 4 x 4
        self.dense = EqualizedLinear(w[0] * 16, w[0])  # w0
        self.score = EqualizedLinear(w[0], 1, gain=1.0)  # 1
        if cfg.num_classes:
            self.label_embed = nn.Embedding(cfg.num_classes, w[0])  # projection term
            nn.init.normal_(self.label_embed.weight, 0.0, 1.0 / math.sqrt(w[0]))

    def _down(self, i: int, x: torch.Tensor) -> torch.Tensor:
        conv_a, conv_b = self.blocks[i]
        x = lrelu(conv_a(x))  # w_i x r x r
        x = lrelu(conv_b(x))  # w_{i-1} x r x r
        return downsample(x)  # w_{i-1} x r/2 x r/2

    def forward(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None = None,
        stage: int | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        stage = self.cfg.stages - 1 if stage is None else stage
        x = lrelu(self.from_rgb[stage](image))  # w_stage x r x r
        if stage > 0:
            x = self._down(stage, x)  # w_{stage-1} x r/2 x r/2
            if alpha < 1.0:
                skip = lrelu(self.from_rgb[stage - 1](downsample(image)))
                x = torch.lerp(skip, x, alpha)
            for i in range(stage - 1, 0, -1):
                x = self._down(i, x)  # down to w0 x 4 x 4
        x = minibatch_stddev(x)  # (w0 + 1) x 4 x 4
        x = lrelu(self.conv4(x))  # w0 x 4 x 4
        h = lrelu(self.dense(x.flatten(1)))  # w0
        out = self.score(h).view(-1)  # one score per image
        if self.cfg.num_classes:
            if label is None:
                raise ValueError("a conditional discriminator needs labels")
            out = out + (self.label_embed(label) * h).sum(dim=1)
        return out


def build_models(cfg: ProGANConfig) -> tuple[Generator, Discriminator]:
    return Generator(cfg), Discriminator(cfg)


# --- growing schedule --------------------------------------------------------------------


@dataclass
class GrowthSchedule:
    """Steps per phase: stage 0 trains ``stable_steps``; every later stage fades in over
    ``fade_steps`` (alpha 0 -> 1) then trains ``stable_steps``; the last stage runs on."""

    stages: int = 4
    fade_steps: int = 300
    stable_steps: int = 300

    def at(self, step: int) -> tuple[int, float]:
        """(stage, alpha) for a 0-based training step."""
        if step < self.stable_steps:
            return 0, 1.0
        t = step - self.stable_steps
        period = self.fade_steps + self.stable_steps
        stage = 1 + t // period
        if stage >= self.stages:
            return self.stages - 1, 1.0
        into = t % period
        alpha = min(1.0, (into + 1) / self.fade_steps) if self.fade_steps else 1.0
        return stage, alpha

    @property
    def growth_steps(self) -> int:
        """Steps until the last stage is fully faded in."""
        return self.stable_steps + (self.stages - 1) * (self.fade_steps + self.stable_steps)


def real_at_stage(images: torch.Tensor, stage: int, stages: int, alpha: float) -> torch.Tensor:
    """Full-size reals [N, C, S, S] at stage ``stage``'s resolution, faded like G's output:
    a blend of the reals at this resolution and at the previous one, upsampled."""
    x = images
    for _ in range(stages - 1 - stage):
        x = downsample(x)  # C x r x r
    if stage > 0 and alpha < 1.0:
        x = torch.lerp(upsample(downsample(x)), x, alpha)
    return x


# --- losses ------------------------------------------------------------------------------


def gradient_penalty(
    d: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    label: torch.Tensor | None,
    eps: torch.Tensor,
    **d_kwargs,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): mean (||grad_x D(x_hat)|| - 1)^2 at
    x_hat = eps * real + (1 - eps) * fake, eps [N, 1, 1, 1] uniform."""
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    score = d(x_hat, label, **d_kwargs)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


@dataclass
class WGANGPLoss:
    """The paper's loss: Wasserstein critic + gradient penalty (lambda 10) + drift eps * D(x)^2."""

    gp_weight: float = 10.0
    drift: float = 1e-3

    def d_loss(
        self,
        d: nn.Module,
        real: torch.Tensor,
        fake: torch.Tensor,
        label: torch.Tensor | None,
        stage: int,
        alpha: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        score_real = d(real, label, stage=stage, alpha=alpha)
        score_fake = d(fake, label, stage=stage, alpha=alpha)
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        gp = gradient_penalty(d, real, fake, label, eps, stage=stage, alpha=alpha)
        loss = (
            score_fake.mean()
            - score_real.mean()
            + self.gp_weight * gp
            + self.drift * (score_real**2).mean()
        )
        stats = {
            "score_real": score_real.detach().mean(),
            "score_fake": score_fake.detach().mean(),
            "gp": gp.detach(),
        }
        return loss, stats

    def g_loss(
        self, d: nn.Module, fake: torch.Tensor, label: torch.Tensor | None, stage: int, alpha: float
    ) -> torch.Tensor:
        return -d(fake, label, stage=stage, alpha=alpha).mean()


# --- the family ------------------------------------------------------------------------


class ProGAN(Family):
    """ProGAN in the shared loop: WGAN-GP critic step (the penalty's double backward happens
    inside ``d_loss``), the growth schedule read from the loop's step counter.

    ``phase_images``: images shown per fade-in and per stabilisation phase (the paper's 800k,
    here 9,600: 300 steps of 32). Adam uses the run's ``lr`` and ``beta1`` with the paper's
    beta2 = 0.99.
    """

    name = FAMILY
    paper = PAPER
    description = "Progressive GAN generator"
    truncation = TRUNCATION

    def __init__(self, phase_images: int = 9600, gp_weight: float = 10.0, drift: float = 1e-3):
        self.phase_images = phase_images
        self.loss = WGANGPLoss(gp_weight, drift)

    def model_config(self, train_cfg: TrainConfig, channels: int, num_classes: int) -> ProGANConfig:
        stages = int(math.log2(train_cfg.image_size)) - 1
        f = train_cfg.ngf  # width at the last stage; earlier stages double it, up to 4 * ngf
        widths = tuple(min(4 * f, f * 2 ** (stages - 1 - i)) for i in range(stages))
        return ProGANConfig(
            image_size=train_cfg.image_size,
            channels=channels,
            nz=train_cfg.nz,
            num_classes=num_classes,
            widths=widths,
        )

    def config_from_dict(self, data: dict[str, Any]) -> ProGANConfig:
        return ProGANConfig(**data)

    def build(self, cfg: ProGANConfig) -> tuple[nn.Module, nn.Module]:
        return build_models(cfg)

    def new_generator(self, cfg: ProGANConfig) -> nn.Module:
        return Generator(cfg)

    def optimizers(
        self, g: nn.Module, d: nn.Module, train_cfg: TrainConfig
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        betas = (train_cfg.beta1, 0.99)
        return (
            torch.optim.Adam(g.parameters(), lr=train_cfg.lr, betas=betas),
            torch.optim.Adam(d.parameters(), lr=train_cfg.lr_d or train_cfg.lr, betas=betas),
        )

    def schedule(self, cfg: ProGANConfig, batch_size: int) -> GrowthSchedule:
        steps = max(1, self.phase_images // batch_size)
        return GrowthSchedule(cfg.stages, fade_steps=steps, stable_steps=steps)

    def d_loss(
        self, g: nn.Module, d: nn.Module, batch: Batch, train_cfg: TrainConfig
    ) -> tuple[torch.Tensor, StepState]:
        cfg = _unwrap(g).cfg
        stage, alpha = self.schedule(cfg, batch.real.shape[0]).at(batch.step)
        real = real_at_stage(batch.real, stage, cfg.stages, alpha)  # faded like G's output
        fake = g(batch.z, batch.labels, stage=stage, alpha=alpha)  # C x r x r
        loss_d, stats = self.loss.d_loss(d, real, fake.detach(), batch.labels, stage, alpha)
        stats["stage"], stats["alpha"] = torch.tensor(float(stage)), torch.tensor(alpha)
        return loss_d, StepState(fake, batch.labels, stats, {"stage": stage, "alpha": alpha})

    def g_loss(
        self, d: nn.Module, batch: Batch, state: StepState, train_cfg: TrainConfig
    ) -> torch.Tensor:
        return self.loss.g_loss(
            d, state.fake, state.fake_labels, state.extra["stage"], state.extra["alpha"]
        )

    def serving_generator(self, g: nn.Module) -> nn.Module:
        return g.for_export()


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)  # a DDP wrapper's model
