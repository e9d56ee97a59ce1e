"""What a run shows and leaves behind for people: the per-epoch sample grid, ``metrics.jsonl``,
the loss curves and the progress bar. Rank 0 alone calls these under DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.manifest import latents_from_seeds

GRID_SEEDS_PER_ROW = 10  # columns of the per-epoch sample grid (seeds 0..9 in every row)


def fixed_grid_inputs(cfg: Any) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Latents for the per-epoch grid, drawn with the service's seed->latent map.

    Conditional: one row per class, seeds 0..9 in every row, so a column is one latent
    across classes. Unconditional: an 8 x 8 grid of seeds 0..63. Returns (z, labels, cols).
    ``cfg`` is a family's model config (``nz``, ``num_classes``).
    """
    if cfg.num_classes:
        cols = GRID_SEEDS_PER_ROW
        seeds = np.tile(np.arange(cols), cfg.num_classes)
        labels = torch.arange(cfg.num_classes).repeat_interleave(cols)
    else:
        cols, seeds, labels = 8, np.arange(64), None
    z = torch.from_numpy(latents_from_seeds(seeds, cfg.nz))
    return z, labels, cols


@torch.no_grad()
def render_grid(g: nn.Module, path: Path, device: torch.device) -> None:
    """Write the fixed-noise sample grid as a PNG (2-pixel gaps, 2x upscale for small S)."""
    from PIL import Image

    z, labels, cols = fixed_grid_inputs(g.cfg)
    was_training = g.training
    g.eval()
    images = g(z.to(device), None if labels is None else labels.to(device)).float().cpu()
    g.train(was_training)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # N x C x S x S
    n, c, s, _ = pixels.shape
    rows, pad = math.ceil(n / cols), 2
    canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (s + pad), pad + col * (s + pad)
        canvas[y : y + s, x : x + s] = pixels[i].permute(1, 2, 0).numpy()
    img = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)
    if s <= 32:
        img = img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON line per finished epoch (rewritten whole, so resumes agree)."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def plot_losses(history: list[dict[str, Any]], trace: list[list[float]], path: Path) -> None:
    """Loss curves (per step, faint; per-epoch means, bold) and D's outputs, via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    if trace:
        steps, loss_d, loss_g = (np.asarray(col) for col in zip(*trace, strict=True))
        ax_loss.plot(steps, loss_d, color="tab:blue", alpha=0.25, linewidth=0.6)
        ax_loss.plot(steps, loss_g, color="tab:orange", alpha=0.25, linewidth=0.6)
    end_steps = [h["step"] for h in history]
    ax_loss.plot(end_steps, [h["loss_d"] for h in history], "o-", color="tab:blue", label="D")
    ax_loss.plot(end_steps, [h["loss_g"] for h in history], "o-", color="tab:orange", label="G")
    ax_loss.set(xlabel="step", ylabel="loss", title="losses (G includes any extra terms)")
    ax_loss.legend()
    epochs = [h["epoch"] for h in history]
    if history and "d_real" in history[0]:
        ax_d.plot(epochs, [h["d_real"] for h in history], "o-", label="D(x)")
        ax_d.plot(epochs, [h["d_fake"] for h in history], "o-", label="D(G(z))")
        ax_d.set(xlabel="epoch", ylabel="mean sigmoid output", ylim=(0, 1), title="discriminator")
        ax_d.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loss_columns(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Every ``loss_*`` column of ``history`` (logged means) against the step, one line each,
    via matplotlib Agg: for loops whose losses are not one D and one G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    steps = [h["step"] for h in history]
    for key in [k for k in (history[0] if history else {}) if k.startswith("loss_")]:
        ax.plot(steps, [h[key] for h in history], "o-", markersize=3, label=key[5:])
    ax.set(xlabel="step", ylabel="loss (unweighted)", title=title)
    if history:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Short names of step statistics on the progress bar.
BAR_NAMES = {"d_real": "Dx", "d_fake": "DGz"}


def progress_bar(total: int, epoch: int, epochs: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=True)


def bar_postfix(stats: dict[str, float], images_per_s: float) -> dict[str, str]:
    """Losses to 3 decimals, D's mean outputs to 2, then images/s."""
    shown = {}
    for key, value in stats.items():
        shown[BAR_NAMES.get(key, key)] = f"{value:.2f}" if key in BAR_NAMES else f"{value:.3f}"
    shown["img_s"] = f"{images_per_s:.0f}"
    return shown


def epoch_line(metrics: dict[str, Any]) -> str:
    """The one line logged per epoch."""
    skip = {"epoch", "step", "images_per_s", "epoch_s", "elapsed_s"}
    names = {"d_real": "D(x)", "d_fake": "D(G(z))"}
    parts = [f"epoch {metrics['epoch']}:"]
    for key, value in metrics.items():
        if key not in skip:
            digits = 3 if key in names else 4
            parts.append(f"{names.get(key, key)} {value:.{digits}f}")
    parts.append(f"{metrics['images_per_s']:.0f} img/s ({metrics['epoch_s']:.1f} s)")
    return " ".join(parts)
