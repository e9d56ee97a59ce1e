"""ProGAN family: growth schedule and fade-in, the paper's layers, WGAN-GP, one training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.families import progan
from training.families.progan import (
    GrowthSchedule,
    ProGAN,
    ProGANConfig,
    downsample,
    gradient_penalty,
    minibatch_stddev,
    pixel_norm,
    real_at_stage,
    upsample,
)
from training.loop import Trainer

TINY = dict(image_size=16, nz=8, embed_dim=4, widths=(8, 8, 4))


def test_schedule_fades_each_new_stage_in_from_zero_to_one() -> None:
    schedule = GrowthSchedule(stages=3, fade_steps=4, stable_steps=2)
    walk = [schedule.at(step) for step in range(16)]
    assert walk[:2] == [(0, 1.0), (0, 1.0)]
    fade = walk[2:6]
    assert [s for s, _ in fade] == [1, 1, 1, 1]
    alphas = [a for _, a in fade]
    assert alphas == sorted(alphas) and alphas[0] < 0.5 and alphas[-1] == 1.0
    assert walk[6:8] == [(1, 1.0), (1, 1.0)]
    assert [s for s, _ in walk[8:12]] == [2, 2, 2, 2] and walk[8][1] < walk[11][1] == 1.0
    assert walk[-1] == (2, 1.0) and schedule.growth_steps == 14


def test_fade_in_blends_generator_and_reals_between_stages() -> None:
    torch.manual_seed(0)
    g = progan.Generator(ProGANConfig(**TINY))  # training mode: the unclamped output
    z, y = torch.randn(3, 8), torch.tensor([0, 4, 9])
    with torch.no_grad():
        old = upsample(g(z, y, stage=1))  # the 8 x 8 network's image, upsampled
        new = g(z, y, stage=2, alpha=1.0)
        assert torch.allclose(g(z, y, stage=2, alpha=0.0), old, atol=1e-6)
        half = g(z, y, stage=2, alpha=0.5)
        assert torch.allclose(half, (old + new) / 2, atol=1e-5)
        assert not torch.allclose(old, new)
        assert torch.equal(g(z, y), new)  # the exported network is the last stage, faded in
        assert torch.equal(g.eval()(z, y), new.clamp(-1, 1))  # in the data's range outside
    real = torch.rand(2, 1, 16, 16)
    assert real_at_stage(real, 2, 3, 1.0) is real
    assert torch.allclose(real_at_stage(real, 2, 3, 0.0), upsample(downsample(real)))
    assert real_at_stage(real, 0, 3, 1.0).shape == (2, 1, 4, 4)


def test_pixel_norm_and_minibatch_stddev() -> None:
    x = torch.randn(4, 6, 3, 3) * 5
    assert torch.allclose(pixel_norm(x).pow(2).mean(dim=1), torch.ones(4, 3, 3), atol=1e-4)
    same = torch.ones(4, 2, 3, 3)
    assert torch.allclose(minibatch_stddev(same)[:, 2], torch.full((4, 3, 3), 1e-4), atol=1e-5)
    spread = torch.cat([torch.zeros(2, 2, 3, 3), torch.full((2, 2, 3, 3), 2.0)])
    out = minibatch_stddev(spread)
    assert out.shape == (4, 3, 3, 3) and torch.allclose(out[:, 2], torch.ones(4, 3, 3), atol=1e-4)


def test_equalised_learning_rate_keeps_raw_weights_unit_normal() -> None:
    torch.manual_seed(0)
    conv = progan.EqualizedConv2d(64, 32, 3)
    assert abs(conv.weight.std().item() - 1.0) < 0.05  # the optimiser sees N(0, 1) weights
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(64 * 9))


class _Linear(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so GP = (||w|| - 1)^2."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_on_a_linear_critic() -> None:
    w = torch.zeros(1, 2, 2)
    w[0, 0, 0], w[0, 1, 1] = 3.0, 4.0  # ||w|| = 5
    real, fake = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    gp = gradient_penalty(_Linear(w), real, fake, None, torch.rand(6, 1, 1, 1))
    assert gp.item() == pytest.approx(16.0, rel=1e-5)
    unit = gradient_penalty(_Linear(w / 5), real, fake, None, torch.rand(6, 1, 1, 1))
    assert unit.item() == pytest.approx(0.0, abs=1e-10)


def test_shared_loop_grows_through_every_stage_with_finite_losses(
    tmp_path, tiny_mnist, make_config
) -> None:
    cfg = make_config(tmp_path, family="progan", lr=1e-3, beta1=0.0, batch_size=8)
    trainer = Trainer(cfg, tiny_mnist)
    trainer.family = ProGAN(phase_images=16)  # 2 steps per phase at batch 8
    real, labels = tiny_mnist.images[:8], tiny_mnist.labels[:8]
    before = [p.clone() for p in trainer.g_ema.parameters()]
    stages = []
    for _ in range(9):
        stats = trainer.train_step(real, labels)
        assert all(math.isfinite(v) for v in stats.values())
        stages.append((stats["stage"], stats["alpha"]))
    assert stages[0] == (0, 1.0) and stages[-1] == (2, 1.0)
    assert [a for s, a in stages if s == 1][:2] == [0.5, 1.0]  # alpha climbs 0 -> 1
    after = list(trainer.g_ema.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with torch.no_grad():
        assert trainer.g_ema(torch.randn(5, cfg.nz), torch.arange(5)).shape == (5, 1, 16, 16)
        assert trainer.d(real, labels).shape == (8,)
