"""The generator's exponential moving average, the weights that get exported.

``update_ema`` after every step; ``calibrate_batchnorm`` after every epoch, because the
averaged weights never ran a forward pass of their own and their BatchNorm running statistics
would belong to other weights.
"""

from __future__ import annotations

import torch
from torch import nn

BN_CALIBRATION_BATCHES = 16
BN_CALIBRATION_SEED = 123_456_789


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, with d warmed up so early weights fade fast."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - d)


@torch.no_grad()
def calibrate_batchnorm(g: nn.Module, batch_size: int, device: torch.device) -> None:
    """Recompute G's BatchNorm running statistics for its current weights.

    A few batches of fresh noise (from a private RNG, so the training RNG stream is untouched)
    give exact cumulative averages. ``g.cfg`` gives ``nz`` and ``num_classes``; a generator
    without BatchNorm is left alone.
    """
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    gen = torch.Generator(device="cpu").manual_seed(BN_CALIBRATION_SEED)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = g.training
    g.train()
    n = max(batch_size, 64)
    for _ in range(BN_CALIBRATION_BATCHES):
        z = torch.randn(n, g.cfg.nz, generator=gen).to(device)
        labels = None
        if g.cfg.num_classes:
            labels = torch.randint(0, g.cfg.num_classes, (n,), generator=gen).to(device)
        g(z, labels)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    g.train(was_training)
