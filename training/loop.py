"""The shared training loop: any GAN family, single process or DDP under ``torchrun``.

One run writes, under ``out_dir``: ``checkpoints/last.pt`` after every epoch (see
:mod:`training.checkpoint`), ``samples/epoch_XXX.png`` (a fixed-noise grid, one row per class
for conditional models), ``metrics.jsonl`` (one line per epoch) and, at the end,
``loss_curve.png``. ``resume`` continues bitwise-identically on CPU from ``last.pt``.
The family (:mod:`training.families`) supplies the models and the two loss steps.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from training import distributed
from training.checkpoint import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from training.data import DatasetError, ImageData, load_training_data, passthrough_collate
from training.ema import calibrate_batchnorm, update_ema
from training.families import FAMILIES, Batch, get_family
from training.logs import (
    bar_postfix,
    epoch_line,
    plot_losses,
    progress_bar,
    render_grid,
    write_metrics,
)

SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
RUN_OUTPUTS = (CHECKPOINT_DIR, SAMPLES_DIR, METRICS_FILE, LOSS_CURVE_FILE)


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults train the shipped ``mnist-cdcgan`` model."""

    family: str = "dcgan"  # a name in training.families.FAMILIES
    data: str = "mnist"  # "mnist" (embedded digits) or an image folder
    out_dir: str = "runs/mnist-cdcgan"
    image_size: int = 32
    channels: int | None = None  # None: the data's own; 1 or 3 converts folder images
    conditional: bool = True  # use class labels when the data has them
    nz: int = 100
    ngf: int = 48  # generator width (DCGAN)
    ndf: int = 48  # discriminator width (DCGAN)
    epochs: int = 30
    batch_size: int = 64  # per process
    lr: float = 2e-4
    lr_d: float | None = None  # D's learning rate when it differs from G's (TTUR)
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.9  # one-sided: target for real images (1.0 disables)
    ema_decay: float = 0.995  # EMA of G's weights, the exported generator (0 disables)
    lr_decay_start: float = 1.0  # fraction of the epochs after which both lrs fall linearly to 0
    mode_seeking: float = 1.0  # weight of the mode-seeking term (Mao et al. 2019; 0 disables)
    d_input_dropout: float = 0.2  # gan2014: dropout on D's input pixels (the paper's 0.2)
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
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (BatchNorm needs 2)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.lr_decay_start <= 1.0:
            raise ValueError(f"lr_decay_start must be in [0, 1], got {self.lr_decay_start}")
        if not 0.0 < self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in (0, 1], got {self.label_smoothing}")
        if not 0.0 <= self.d_input_dropout < 1.0:
            raise ValueError(f"d_input_dropout must be in [0, 1), got {self.d_input_dropout}")
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


def lr_factor(step: int, steps: int, decay_start: float) -> float:
    """1 for the first ``decay_start`` of the steps (or epochs), then linearly down to 0."""
    start = int(steps * decay_start)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, steps - start))


class RunExistsError(FileExistsError):
    """The run folder already holds a run, and neither --resume nor --force was given."""


def prepare_run_dir(cfg: TrainConfig, rt: distributed.Runtime) -> None:
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
    distributed.barrier(rt)


def _batches(loader: DataLoader, limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


class Trainer:
    """Holds the models, optimisers and state of one run; :meth:`fit` trains to ``cfg.epochs``."""

    def __init__(self, cfg: TrainConfig, data: ImageData | None = None):
        self.cfg = cfg
        self.family = get_family(cfg.family)
        self.rt = distributed.init_runtime(cfg.device)
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
        num_classes = self.data.num_classes if cfg.conditional else 0
        self.mcfg = self.family.model_config(cfg, self.data.channels, num_classes)
        self.class_names = list(self.data.class_names) if self.mcfg.num_classes else []
        # Same initial weights on every rank (seeded), different noise per rank after that.
        torch.manual_seed(cfg.seed)
        g, d = self.family.build(self.mcfg)
        self.family.init_from_data(g, d, self.data.images)
        dev = self.rt.device
        self.g, self.d = g.to(dev), d.to(dev)
        self.g_ema = copy.deepcopy(self.g).eval() if cfg.ema_decay > 0 else None
        if self.g_ema is not None:
            self.g_ema.requires_grad_(False)
        self.opt_g, self.opt_d = self.family.optimizers(self.g, self.d, cfg)
        self.amp = cfg.amp and dev.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.trace: list[list[float]] = []  # [step, loss_d, loss_g] per step
        self.elapsed_s = 0.0
        if cfg.resume:
            self._resume()
        if not cfg.resume:
            torch.manual_seed(cfg.seed + 1 + self.rt.rank)
        self.g_ddp: nn.Module = distributed.wrap(self.g, self.rt)
        self.d_ddp: nn.Module = distributed.wrap(self.d, self.rt)
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
        family = ckpt.get("family", "dcgan")
        if family != self.family.name or ckpt["model_config"] != self.mcfg.to_dict():
            raise ValueError(
                f"--resume: {path} was trained as {family} with {ckpt['model_config']}, but this "
                f"run would build {self.family.name} with {self.mcfg.to_dict()}; use the same "
                "model options or a new --out-dir"
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
            set_rng_state(states[self.rt.rank], self.rt.device)
        else:  # a different number of processes: a fresh but reproducible stream
            torch.manual_seed(self.cfg.seed + 1000 * self.epoch + self.rt.rank)
        self._log(f"resumed from {path} after epoch {self.epoch} (step {self.step})")

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under DDP: every rank's RNG state is gathered)."""
        train_config = self.cfg.to_dict()
        train_config["world_size"] = self.rt.world_size
        return {
            "family": self.family.name,
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
            "rng": {"per_rank": distributed.all_gather_objects(rng_state(self.rt.device), self.rt)},
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
        """One D update then one G update; returns the losses and the family's stats."""
        dev, n = self.rt.device, real.shape[0]
        batch = Batch(
            real=real.to(dev, non_blocking=True),
            labels=labels.to(dev, non_blocking=True) if self.mcfg.num_classes else None,
            z=torch.randn(n, self.mcfg.nz, device=dev),
            step=self.step,
        )

        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d, state = self.family.d_loss(self.g_ddp, self.d_ddp, batch, self.cfg)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        # D is frozen and used unwrapped so its DDP reducer stays out of G's backward pass.
        self.opt_g.zero_grad(set_to_none=True)
        self.d.requires_grad_(False)
        with self._autocast():
            loss_g = self.family.g_loss(self.d, batch, state, self.cfg)
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
            **{k: v.item() for k, v in state.stats.items()},
        }

    # -- epochs --

    def set_learning_rates(self) -> None:
        """Each optimiser's lr for this epoch: its initial lr times the linear decay factor."""
        factor = lr_factor(self.epoch, self.cfg.epochs, self.cfg.lr_decay_start)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def train_epoch(self) -> dict[str, Any]:
        self.sampler.set_epoch(self.epoch)
        self.set_learning_rates()
        self.g.train()
        self.d.train()
        total = len(self.loader)
        if self.cfg.steps_per_epoch is not None:
            total = min(total, self.cfg.steps_per_epoch)
        bar = None
        if self.cfg.progress and self.rt.is_main:
            bar = progress_bar(total, self.epoch + 1, self.cfg.epochs)
        sums: dict[str, float] = {}
        seen, steps, start = 0, 0, time.perf_counter()
        for real, labels in _batches(self.loader, self.cfg.steps_per_epoch):
            stats = self.train_step(real, labels)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            seen += real.shape[0] * self.rt.world_size
            self.trace.append([self.step, stats["loss_d"], stats["loss_g"]])
            if bar is not None:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(bar_postfix(stats, rate))
                bar.update(1)
        if bar is not None:
            bar.close()
        epoch_s = time.perf_counter() - start
        means = distributed.all_mean({k: v / max(steps, 1) for k, v in sums.items()}, self.rt)
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
        write_metrics(self.out / METRICS_FILE, self.history)
        save_checkpoint(self.checkpoint_path, ckpt)
        if self.cfg.keep_epoch_checkpoints:
            save_checkpoint(self.out / CHECKPOINT_DIR / f"epoch_{self.epoch}.pt", ckpt)
        self._log(epoch_line(metrics))

    def fit(self) -> Path:
        """Train until ``cfg.epochs`` epochs are complete; returns ``checkpoints/last.pt``."""
        if self.epoch >= self.cfg.epochs:
            self._log(
                f"nothing left to do: {self.checkpoint_path} has finished {self.epoch} of "
                f"{self.cfg.epochs} epochs; pass a larger --epochs to train further"
            )
            return self.checkpoint_path
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log(
                f"training {self.family.name} {self.mcfg} on {len(self.data)} images from "
                f"{self.data.source} ({self.rt.device}, {self.rt.world_size} process(es), "
                f"amp={self.amp})"
            )
        while self.epoch < self.cfg.epochs:
            self.end_epoch(self.train_epoch())
        if self.rt.is_main:
            plot_losses(self.history, self.trace, self.out / LOSS_CURVE_FILE)
        distributed.barrier(self.rt)
        return self.checkpoint_path


def train(cfg: TrainConfig, data: ImageData | None = None) -> Path:
    """Run training to completion and return the path of the last checkpoint."""
    trainer = Trainer(cfg, data)
    try:
        return trainer.fit()
    finally:
        distributed.shutdown(trainer.rt)
