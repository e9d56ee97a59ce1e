"""BigGAN family: spectral norm, orthogonal regularisation, hinge loss, one training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.ema import calibrate_batchnorm
from training.families import biggan
from training.families.biggan import (
    BigGANConfig,
    hinge_d_loss,
    orthogonal_penalty,
    orthogonal_regularisation,
    sn,
    spectral_norm_estimate,
)
from training.loop import Trainer

TINY = dict(
    image_size=16,
    nz=12,
    shared_dim=4,
    g_widths=(16, 16, 16),
    d_widths=(16, 16, 16),
    attention_at=8,
)


def test_spectral_norm_estimate_converges_to_the_top_singular_value() -> None:
    torch.manual_seed(0)
    layer = sn(nn.Linear(6, 4))
    true_sigma = torch.linalg.matrix_norm(layer.parametrizations.weight.original, ord=2)
    x = torch.randn(2, 6)
    first = spectral_norm_estimate(layer).item()
    for _ in range(30):  # one power iteration per training-mode call
        layer(x)
    assert spectral_norm_estimate(layer).item() == pytest.approx(true_sigma.item(), rel=1e-3)
    assert first <= true_sigma.item() + 1e-6  # a power-iteration estimate never overshoots
    top = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert top.item() == pytest.approx(1.0, rel=1e-3)


def test_orthogonal_regulariser_is_zero_only_for_orthogonal_rows() -> None:
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert orthogonal_penalty(q).item() == pytest.approx(0.0, abs=1e-10)
    scaled = q * torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0])[:, None]  # norms free, angles not
    assert orthogonal_penalty(scaled).item() == pytest.approx(0.0, abs=1e-9)
    assert orthogonal_penalty(torch.ones(3, 4)).item() == pytest.approx(6 * 16.0)


def test_hinge_loss_counts_only_margin_violations() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.5)


def test_generator_uses_every_latent_chunk_and_the_label() -> None:
    torch.manual_seed(0)
    g, _ = biggan.build_models(BigGANConfig(**TINY))
    g.eval()
    z, y = torch.randn(2, 12), torch.tensor([1, 2])
    with torch.no_grad():
        base = g(z, y)
        assert base.shape == (2, 1, 16, 16) and base.abs().max() <= 1.0
        for chunk in range(3):  # chunk 0 feeds the 4 x 4 layer, 1-2 the blocks' CBN
            moved = z.clone()
            moved[:, chunk * 4 : (chunk + 1) * 4] += 1.0
            assert not torch.allclose(g(moved, y), base)
        assert not torch.allclose(g(z, torch.tensor([3, 4])), base)
    assert "0" in g.attention  # attention after the 8 x 8 block here (16 x 16 when S = 32)


def test_shared_loop_steps_are_finite_and_export_copy_matches_eval(
    tmp_path, tiny_mnist, make_config
) -> None:
    cfg = make_config(tmp_path, family="biggan", nz=12, beta1=0.0, batch_size=8)
    trainer = Trainer(cfg, tiny_mnist)
    real, labels = tiny_mnist.images[:8], tiny_mnist.labels[:8]
    ortho = orthogonal_regularisation(trainer.g).item()
    for _ in range(2):
        stats = trainer.train_step(real, labels)
        assert all(math.isfinite(v) for v in stats.values())
    assert ortho > 0 and orthogonal_regularisation(trainer.g).item() != ortho
    g = trainer.g_ema
    calibrate_batchnorm(g, 8, torch.device("cpu"))
    z, y = torch.randn(4, 12), torch.tensor([0, 3, 5, 9])
    exported = g.for_export()
    with torch.no_grad():
        expected = g.eval()(z, y)
        assert expected.shape == (4, 1, 16, 16)
        assert torch.allclose(exported(z, y), expected, atol=1e-5)
    assert not any(hasattr(m, "parametrizations") for m in exported.modules())
