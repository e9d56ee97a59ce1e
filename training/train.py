"""The DCGAN training loop: single process, or DistributedDataParallel under ``torchrun``.

One run writes, under ``out_dir``: ``checkpoints/last.pt`` after every epoch (the format the
exporter reads, see :func:`save_checkpoint`), ``samples/epoch_XXX.png`` (a fixed-noise grid,
one row per class for conditional models), ``metrics.jsonl`` (one line per epoch) and, at the
end, ``loss_curve.png``. ``--resume`` continues bitwise-identically on CPU from ``last.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from service.manifest import latents_from_seeds
from training.data import DatasetError, ImageData, load_training_data, passthrough_collate
from training.model import IMAGE_SIZE_HELP, Generator, ModelConfig, build_models

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
GRID_SEEDS_PER_ROW = 10  # columns of the per-epoch sample grid (seeds 0..9 in every row)
BN_CALIBRATION_BATCHES = 16
BN_CALIBRATION_SEED = 123_456_789


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults train the shipped ``mnist-cdcgan`` model."""

    data: str = "mnist"  # "mnist" (embedded digits) or an image folder
    out_dir: str = "runs/mnist-cdcgan"
    image_size: int = 32
    channels: int | None = None  # None: the data's own; 1 or 3 converts folder images
    conditional: bool = True  # use class labels when the data has them
    nz: int = 100
    ngf: int = 48  # generator width
    ndf: int = 48  # discriminator width
    epochs: int = 30
    batch_size: int = 64  # per process
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.9  # one-sided: target for real images (1.0 disables)
    ema_decay: float = 0.995  # EMA of G's weights, the exported generator (0 disables)
    mode_seeking: float = 1.0  # weight of the mode-seeking term (Mao et al. 2019; 0 disables)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision, CUDA only
    num_workers: int = 0
    steps_per_epoch: int | None = None  # cap batches per epoch (quick runs and tests)
    keep_epoch_checkpoints: bool = False  # also write checkpoints/epoch_<k>.pt
    resume: bool = False
    force: bool = False  # start over in an out_dir that holds a run (its outputs are removed)
    progress: bool = True
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (BatchNorm needs 2)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in (0, 1], got {self.label_smoothing}")
        if self.mode_seeking < 0:
            raise ValueError(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.resume and self.force:
            raise ValueError("--resume and --force exclude each other: continue or start over")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- distributed set-up ------------------------------------------------------------------


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size (1 without torchrun)."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_runtime(cfg: TrainConfig) -> Runtime:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Runtime(device=device, rank=rank, local_rank=local_rank, world_size=world_size)


def _all_mean(values: dict[str, float], rt: Runtime) -> dict[str, float]:
    """Average scalar metrics over all processes."""
    if not rt.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return {k: float(v) / rt.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, half: int) -> torch.Tensor:
    """1 / (image distance / latent distance) over pairs (i, half + i) (Mao et al., MSGAN).

    Small when different latents give different images: it pushes G away from ignoring z,
    the conditional GAN's usual collapse to one image per class.
    """
    d_img = (fake[:half].float() - fake[half : 2 * half].float()).abs().mean()
    d_z = (z[:half] - z[half : 2 * half]).abs().mean()
    return 1.0 / (d_img / d_z + 1e-5)


# --- EMA and sampling --------------------------------------------------------------------


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, with d warmed up so early weights fade fast."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - d)


@torch.no_grad()
def calibrate_batchnorm(g: Generator, batch_size: int, device: torch.device) -> None:
    """Recompute G's BatchNorm running statistics for its current weights.

    The EMA weights never ran a forward pass, so their running statistics would belong to
    other weights; a few batches of fresh noise (from a private RNG, so the training RNG
    stream is untouched) give exact cumulative averages.
    """
    gen = torch.Generator(device="cpu").manual_seed(BN_CALIBRATION_SEED)
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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


def fixed_grid_inputs(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Latents for the per-epoch grid, drawn with the service's seed->latent map.

    Conditional: one row per class, seeds 0..9 in every row, so a column is one latent
    across classes. Unconditional: an 8 x 8 grid of seeds 0..63. Returns (z, labels, cols).
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
def render_grid(g: Generator, path: Path, device: torch.device) -> None:
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
    ax_loss.set(xlabel="step", ylabel="loss", title="losses (G includes any mode-seeking term)")
    ax_loss.legend()
    epochs = [h["epoch"] for h in history]
    ax_d.plot(epochs, [h["d_real"] for h in history], "o-", label="D(x)")
    ax_d.plot(epochs, [h["d_fake"] for h in history], "o-", label="D(G(z))")
    ax_d.set(xlabel="epoch", ylabel="mean sigmoid output", ylim=(0, 1), title="discriminator")
    ax_d.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- checkpoints -------------------------------------------------------------------------


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Atomic torch.save: a reader never sees half a file, a crash never loses the previous one.

    Keys: model_config, train_config, generator, generator_ema (or None), discriminator,
    opt_g, opt_d, epoch (completed), step, class_names, history, rng, elapsed_s.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A file that is not a gan-train checkpoint, or one missing what the caller needs."""


REQUIRED_KEYS = ("model_config", "generator", "epoch", "step")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (tensors, numbers, strings and lists only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run's checkpoints/last.pt"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file of the wrong format
        raise CheckpointError(
            f"{path} is not a gan-train checkpoint ({type(exc).__name__}); "
            "pass a run's checkpoints/last.pt"
        ) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a gan-train checkpoint (no {', '.join(missing)}); "
            "pass a run's checkpoints/last.pt"
        )
    return ckpt


def generator_from_checkpoint(
    path: str | Path, use_ema: bool = True
) -> tuple[Generator, ModelConfig, dict[str, Any]]:
    """The generator of a checkpoint in eval mode: the EMA copy when there is one and asked for."""
    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig(**ckpt["model_config"])
        g = Generator(cfg)
        state = (
            ckpt["generator_ema"] if use_ema and ckpt.get("generator_ema") else ckpt["generator"]
        )
        g.load_state_dict(state)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its generator does not match its model_config ({type(exc).__name__}); "
            "was it written by another version of gan-train?"
        ) from exc
    g.eval()
    return g, cfg, ckpt


# --- the loop ----------------------------------------------------------------------------


def _model_config(cfg: TrainConfig, data: ImageData) -> ModelConfig:
    return ModelConfig(
        image_size=cfg.image_size,
        channels=data.channels,
        nz=cfg.nz,
        ngf=cfg.ngf,
        ndf=cfg.ndf,
        num_classes=data.num_classes if cfg.conditional else 0,
    )


def _batches(loader: DataLoader, limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


RUN_OUTPUTS = (CHECKPOINT_DIR, SAMPLES_DIR, METRICS_FILE, LOSS_CURVE_FILE)


class RunExistsError(FileExistsError):
    """The run folder already holds a run, and neither --resume nor --force was given."""


def prepare_run_dir(cfg: TrainConfig, rt: Runtime) -> None:
    """Refuse to train over an existing run unless asked to continue (--resume) or to start
    over (--force, which removes that run's outputs and nothing else in the folder)."""
    out = Path(cfg.out_dir)
    found = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not found or cfg.resume:
        return
    if not cfg.force:
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(found)}); pass --resume to "
            "continue it, --force to start over (removes it), or another --out-dir"
        )
    if rt.is_main:
        for name in found:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if rt.distributed:
        dist.barrier()


class Trainer:
    """Holds the models, optimisers and state of one run; :meth:`fit` trains to ``cfg.epochs``."""

    def __init__(self, cfg: TrainConfig, data: ImageData | None = None):
        self.cfg = cfg
        self.rt = init_runtime(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out_dir)
        prepare_run_dir(cfg, self.rt)
        self.data = (
            data if data is not None else load_training_data(cfg.data, cfg.image_size, cfg.channels)
        )
        if len(self.data) < cfg.batch_size * self.rt.world_size:
            raise DatasetError(
                f"{self.data.source or cfg.data} has {len(self.data)} images, fewer than one "
                f"batch ({cfg.batch_size} x {self.rt.world_size} processes); lower --batch-size"
            )
        self.mcfg = _model_config(cfg, self.data)
        self.class_names = list(self.data.class_names) if self.mcfg.num_classes else []
        # Same initial weights on every rank (seeded), different noise per rank after that.
        torch.manual_seed(cfg.seed)
        g, d = build_models(self.mcfg)
        dev = self.rt.device
        self.g, self.d = g.to(dev), d.to(dev)
        self.g_ema = copy.deepcopy(self.g).eval() if cfg.ema_decay > 0 else None
        if self.g_ema is not None:
            self.g_ema.requires_grad_(False)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=betas)
        self.amp = cfg.amp and dev.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.trace: list[list[float]] = []  # [step, loss_d, loss_g] per step
        self.elapsed_s = 0.0
        if cfg.resume:
            self._resume()
        if not cfg.resume:
            torch.manual_seed(cfg.seed + 1 + self.rt.rank)
        if self.rt.distributed:
            ids = [dev.index] if dev.type == "cuda" else None
            self.g_ddp: nn.Module = DistributedDataParallel(self.g, device_ids=ids)
            self.d_ddp: nn.Module = DistributedDataParallel(self.d, device_ids=ids)
        else:
            self.g_ddp, self.d_ddp = self.g, self.d
        self.sampler = DistributedSampler(
            self.data,
            num_replicas=self.rt.world_size,
            rank=self.rt.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        self.loader = DataLoader(
            self.data,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            collate_fn=passthrough_collate,
            pin_memory=dev.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )

    # -- state --

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_DIR / LAST_CHECKPOINT

    def _resume(self) -> None:
        path = self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; train without --resume")
        ckpt = load_checkpoint(path)
        if ckpt["model_config"] != self.mcfg.to_dict():
            raise ValueError(
                f"--resume: {path} was trained with {ckpt['model_config']}, but this run would "
                f"build {self.mcfg.to_dict()}; use the same model options or a new --out-dir"
            )
        self.g.load_state_dict(ckpt["generator"])
        self.d.load_state_dict(ckpt["discriminator"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        if self.g_ema is not None:
            if ckpt.get("generator_ema"):
                self.g_ema.load_state_dict(ckpt["generator_ema"])
            else:
                self.g_ema.load_state_dict(ckpt["generator"])
        for name in ("scaler_g", "scaler_d"):
            if ckpt.get(name):
                getattr(self, name).load_state_dict(ckpt[name])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.history = list(ckpt["history"])
        self.trace = [list(t) for t in ckpt.get("trace", [])]
        self.elapsed_s = float(ckpt["elapsed_s"])
        states = ckpt["rng"].get("per_rank", [])
        if len(states) == self.rt.world_size:
            _set_rng_state(states[self.rt.rank], self.rt.device)
        else:  # a different number of processes: a fresh but reproducible stream
            torch.manual_seed(self.cfg.seed + 1000 * self.epoch + self.rt.rank)
        self._log(f"resumed from {path} after epoch {self.epoch} (step {self.step})")

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = _rng_state(self.rt.device)
        if not self.rt.distributed:
            return [mine]
        everyone: list[Any] = [None] * self.rt.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def checkpoint(self) -> dict[str, Any]:
        train_config = self.cfg.to_dict()
        train_config["world_size"] = self.rt.world_size
        return {
            "model_config": self.mcfg.to_dict(),
            "train_config": train_config,
            "generator": self.g.state_dict(),
            "generator_ema": None if self.g_ema is None else self.g_ema.state_dict(),
            "discriminator": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict() if self.amp else None,
            "scaler_d": self.scaler_d.state_dict() if self.amp else None,
            "epoch": self.epoch,
            "step": self.step,
            "class_names": self.class_names,
            "history": self.history,
            "trace": self.trace,
            "rng": {"per_rank": self._gather_rng()},
            "elapsed_s": self.elapsed_s,
        }

    def _log(self, msg: str) -> None:
        if self.rt.is_main:
            print(msg, file=sys.stderr, flush=True)

    # -- one step --

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One D update then one G update; returns losses and D's mean outputs."""
        dev, n = self.rt.device, real.shape[0]
        real = real.to(dev, non_blocking=True)
        cond = labels.to(dev, non_blocking=True) if self.mcfg.num_classes else None
        z = torch.randn(n, self.mcfg.nz, device=dev)
        real_target = torch.full((n,), self.cfg.label_smoothing, device=dev)
        fake_target = torch.zeros(n, device=dev)
        ones = torch.ones(n, device=dev)
        half = n // 2 if self.cfg.mode_seeking > 0 else 0
        fake_cond = cond
        if half and cond is not None:
            # pairs (i, half + i) share a label, so the mode-seeking term compares like with like
            fake_cond = cond.clone()
            fake_cond[half : 2 * half] = cond[:half]

        # D: maximise log D(x) + log(1 - D(G(z))), real targets smoothed one-sidedly.
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            fake = self.g_ddp(z, fake_cond)  # C x S x S
            logit_real = self.d_ddp(real, cond)
            logit_fake = self.d_ddp(fake.detach(), fake_cond)
            loss_d = self.loss_fn(logit_real.float(), real_target) + self.loss_fn(
                logit_fake.float(), fake_target
            )
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        # G: non-saturating loss, maximise log D(G(z)). D is frozen and used unwrapped so
        # its DDP reducer stays out of G's backward pass.
        self.opt_g.zero_grad(set_to_none=True)
        self.d.requires_grad_(False)
        with self._autocast():
            logit_gen = self.d(fake, fake_cond)
            loss_g = self.loss_fn(logit_gen.float(), ones)
            if half:
                loss_g = loss_g + self.cfg.mode_seeking * mode_seeking_loss(fake, z, half)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.d.requires_grad_(True)

        self.step += 1
        if self.g_ema is not None:
            update_ema(self.g_ema, self.g, self.cfg.ema_decay, self.step)
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": torch.sigmoid(logit_real.detach().float()).mean().item(),
            "d_fake": torch.sigmoid(logit_fake.detach().float()).mean().item(),
        }

    # -- epochs --

    def _progress(self, total: int) -> Any:
        if not (self.cfg.progress and self.rt.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=True)

    def train_epoch(self) -> dict[str, Any]:
        self.sampler.set_epoch(self.epoch)
        self.g.train()
        self.d.train()
        total = len(self.loader)
        if self.cfg.steps_per_epoch is not None:
            total = min(total, self.cfg.steps_per_epoch)
        bar = self._progress(total)
        sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
        seen, steps, start = 0, 0, time.perf_counter()
        for real, labels in _batches(self.loader, self.cfg.steps_per_epoch):
            stats = self.train_step(real, labels)
            for k in sums:
                sums[k] += stats[k]
            steps += 1
            seen += real.shape[0] * self.rt.world_size
            self.trace.append([self.step, stats["loss_d"], stats["loss_g"]])
            if bar is not None:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    loss_d=f"{stats['loss_d']:.3f}",
                    loss_g=f"{stats['loss_g']:.3f}",
                    Dx=f"{stats['d_real']:.2f}",
                    DGz=f"{stats['d_fake']:.2f}",
                    img_s=f"{rate:.0f}",
                )
                bar.update(1)
        if bar is not None:
            bar.close()
        epoch_s = time.perf_counter() - start
        means = _all_mean({k: v / max(steps, 1) for k, v in sums.items()}, self.rt)
        self.epoch += 1
        self.elapsed_s += epoch_s
        return {
            "epoch": self.epoch,
            "step": self.step,
            **{k: round(v, 6) for k, v in means.items()},
            "images_per_s": round(seen / max(epoch_s, 1e-9), 1),
            "epoch_s": round(epoch_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        """Calibrate the EMA's BatchNorm, then (rank 0) grid, metrics and checkpoint."""
        self.history.append(metrics)
        if self.g_ema is not None:
            calibrate_batchnorm(self.g_ema, self.cfg.batch_size, self.rt.device)
        ckpt = self.checkpoint()  # collective in DDP: every rank takes part
        if not self.rt.is_main:
            return
        render_grid(
            self.g_ema if self.g_ema is not None else self.g,
            self.out / SAMPLES_DIR / f"epoch_{self.epoch:03d}.png",
            self.rt.device,
        )
        with open(self.out / METRICS_FILE, "w", encoding="utf-8") as fh:
            for row in self.history:
                fh.write(json.dumps(row) + "\n")
        save_checkpoint(self.checkpoint_path, ckpt)
        if self.cfg.keep_epoch_checkpoints:
            save_checkpoint(self.out / CHECKPOINT_DIR / f"epoch_{self.epoch}.pt", ckpt)
        self._log(
            f"epoch {metrics['epoch']}: loss_d {metrics['loss_d']:.4f} "
            f"loss_g {metrics['loss_g']:.4f} D(x) {metrics['d_real']:.3f} "
            f"D(G(z)) {metrics['d_fake']:.3f} {metrics['images_per_s']:.0f} img/s "
            f"({metrics['epoch_s']:.1f} s)"
        )

    def fit(self) -> Path:
        """Train until ``cfg.epochs`` epochs are complete; returns ``checkpoints/last.pt``."""
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log(
                f"training {self.mcfg} on {len(self.data)} images from {self.data.source} "
                f"({self.rt.device}, {self.rt.world_size} process(es), amp={self.amp})"
            )
        if self.epoch >= self.cfg.epochs:
            self._log(
                f"nothing left to do: {self.checkpoint_path} has finished {self.epoch} of "
                f"{self.cfg.epochs} epochs; pass a larger --epochs to train further"
            )
            return self.checkpoint_path
        while self.epoch < self.cfg.epochs:
            self.end_epoch(self.train_epoch())
        if self.rt.is_main:
            plot_losses(self.history, self.trace, self.out / LOSS_CURVE_FILE)
        if self.rt.distributed:
            dist.barrier()
        return self.checkpoint_path


def train(cfg: TrainConfig, data: ImageData | None = None) -> Path:
    """Run training to completion and return the path of the last checkpoint."""
    trainer = Trainer(cfg, data)
    try:
        return trainer.fit()
    finally:
        if trainer.rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


# --- command line ------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``gan-train train``; defaults reproduce the shipped model."""
    d = TrainConfig()
    add = parser.add_argument
    add("--data", default=d.data, help="'mnist' (embedded digits) or an image folder")
    add("--out-dir", default=d.out_dir, help="run folder (checkpoints, samples, metrics)")
    add("--image-size", type=int, default=d.image_size, help=f"output size: {IMAGE_SIZE_HELP}")
    add("--channels", type=int, choices=(1, 3), default=None, help="1 or 3 (default: the data's)")
    add("--unconditional", action="store_true", help="ignore class labels of the data")
    add("--nz", type=int, default=d.nz, help="latent size")
    add("--ngf", type=int, default=d.ngf, help="generator width")
    add("--ndf", type=int, default=d.ndf, help="discriminator width")
    add("--epochs", type=int, default=d.epochs, help="epochs in all (also with --resume)")
    add("--batch-size", type=int, default=d.batch_size, help="images per step, per process")
    add("--lr", type=float, default=d.lr, help="Adam learning rate of G and D")
    add("--beta1", type=float, default=d.beta1, help="Adam beta1")
    add(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="target for real images (one-sided smoothing; 1.0 disables)",
    )
    add("--ema-decay", type=float, default=d.ema_decay, help="EMA of G's weights (0 disables)")
    add(
        "--mode-seeking",
        type=float,
        default=d.mode_seeking,
        help="weight of the mode-seeking diversity term (0 disables)",
    )
    add("--seed", type=int, default=d.seed, help="weights, noise and data order")
    add("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: CUDA if any")
    add("--no-amp", action="store_true", help="no mixed precision on CUDA")
    add("--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes")
    add(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="cap batches per epoch (default: all batches)",
    )
    add("--keep-epoch-checkpoints", action="store_true", help="also keep epoch_<k>.pt")
    add("--resume", action="store_true", help="continue the run in --out-dir from last.pt")
    add("--force", action="store_true", help="start over in --out-dir, removing its run")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        out_dir=args.out_dir,
        image_size=args.image_size,
        channels=args.channels,
        conditional=not args.unconditional,
        nz=args.nz,
        ngf=args.ngf,
        ndf=args.ndf,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        beta1=args.beta1,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema_decay,
        mode_seeking=args.mode_seeking,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        num_workers=args.num_workers,
        steps_per_epoch=args.steps_per_epoch,
        keep_epoch_checkpoints=args.keep_epoch_checkpoints,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    """Train; a user's mistake raises, and ``gan-train`` turns it into one line and exit 2."""
    path = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0
