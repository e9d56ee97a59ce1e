"""``gan-train cyclegan``: train a CycleGAN on two unpaired domains, then export it.

Its own small loop beside :mod:`training.loop`, which draws latents and steps one G and one D;
CycleGAN steps two of each on two image streams. It reuses the shared checkpoint writer,
RNG capture and logging helpers. Per step (the paper's order): both generators on the
adversarial (LSGAN), cycle (L1, weight ``lambda_cycle``) and identity (L1, weight
``lambda_identity * lambda_cycle``) losses (with ``augment_cycle_a``, G_BA reads a
:func:`recolour`-ed A->B in the A cycle), then each discriminator on real images against a
pool of the last ``pool_size`` generated ones, its loss halved. Adam with ``lr`` constant for
the first half of the steps, then decayed linearly to zero.

Writes under ``out_dir``: ``checkpoints/last.pt``, ``metrics.jsonl`` (a line every
``log_every`` steps), ``samples/step_XXXXXX.png`` (held-out A, A->B, A->B->A, B, B->A,
B->A->B rows) and ``loss_curve.png``; with ``--select-every``, also ``checkpoints/best.pt``, the
step chosen on a validation split (:mod:`training.cyclegan_select`), and with
``--average-every``, ``checkpoints/average.pt``, the mean of the weights taken during the lr
decay (:class:`WeightAverage`). With ``--store``, exports the model (that chosen or averaged
one, where there is one) and evaluates it.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.checkpoint import CHECKPOINT_DIR, LAST_CHECKPOINT, save_checkpoint
from training.cli import model_name
from training.cyclegan_select import BEST_CHECKPOINT, ValidationSet, carve_validation
from training.domains import EMBEDDED_PAIRS, MNIST_FONTS, DomainPair, load_domain_pair
from training.families.cyclegan import CycleGAN, CycleGANConfig
from training.logs import plot_loss_columns, write_metrics
from training.loop import LOSS_CURVE_FILE, lr_factor

METRICS_FILE = "metrics.jsonl"
AVERAGE_CHECKPOINT = "average.pt"
SAMPLES_DIR = "samples"
SAMPLE_COLUMNS = 10


@dataclass
class CycleTrainConfig:
    """A CycleGAN run; the defaults train the shipped ``mnist-fonts-cyclegan``."""

    pair: str = MNIST_FONTS  # the embedded pair, when no folders are given
    data_a: str | None = None  # None (with data_b None): the embedded pair
    data_b: str | None = None
    out_dir: str = "runs/mnist-fonts-cyclegan"
    image_size: int = 32
    channels: int | None = None
    load_size: int | None = None  # > image_size: the paper's scale jitter (resize, random crop)
    ngf: int = 16
    ndf: int = 32
    n_blocks: int = 3
    d_downsample: int = 1  # 2 or 3: discriminators that judge larger parts of the image
    steps: int = 1200
    batch_size: int = 8  # the paper: 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cycle: float = 10.0
    lambda_cycle_b: float | None = None  # the B->A->B cycle's weight; None: lambda_cycle
    lambda_identity: float = 0.5  # times lambda_cycle
    augment_cycle_a: bool = False  # recolour A->B before B->A in the A cycle (not the paper's)
    pool_size: int = 50
    decay_start: float = 0.5  # fraction of the steps after which lr decays linearly to 0
    select_every: int = 0  # >0: score a validation split every N decay steps, keep the best
    average_every: int = 0  # >0: export the mean of the weights taken every N decay steps
    validation_per_class: int = 30  # images per class set aside from each domain's training
    log_every: int = 50
    sample_every: int = 500
    seed: int = 0
    threads: int = 1

    @property
    def cycle_weight_b(self) -> float:
        return self.lambda_cycle if self.lambda_cycle_b is None else self.lambda_cycle_b

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImagePool:
    """The last ``size`` generated images (Shrivastava et al. 2017): once full, each new image
    is, with probability 1/2, swapped for a random stored one which D sees instead."""

    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.rng = rng
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch.detach()  # D's step must not reach back into G's graph
        out = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k])
                self.images[k] = image
            else:
                out.append(image)
        return torch.stack(out)


def recolour(images: torch.Tensor) -> torch.Tensor:
    """Per image: a random order of the colour channels and, half of the time, inverted
    intensities (``-x`` in [-1, 1]); differentiable, drawn from torch's global generator.

    Applied to G_AB's output before G_BA in the A->B->A cycle, it shows G_BA strokes of every
    colour and either polarity, as real B images have them (MNIST-M's strokes are the photo
    inverted, dark over light patches); without it G_BA only learns to undo G_AB's own
    palette. French et al. 2018 use intensity flips the same way for digit domains.
    """
    n, c = images.shape[:2]
    order = torch.stack([torch.randperm(c) for _ in range(n)])  # N x C
    images = torch.gather(images, 1, order[:, :, None, None].expand_as(images))
    flip = (torch.rand(n, 1, 1, 1) < 0.5).to(images.dtype)
    return images * (1 - 2 * flip)


def jitter(images: torch.Tensor, load_size: int, gen: torch.Generator) -> torch.Tensor:
    """The paper's scale jitter (its images are loaded at 286 and cropped to 256): each image
    resized to ``load_size`` (bilinear), then a random crop of the original size."""
    n, _, size, _ = images.shape
    grown = F.interpolate(images, size=(load_size, load_size), mode="bilinear", align_corners=False)
    corners = torch.randint(0, load_size - size + 1, (n, 2), generator=gen).tolist()
    return torch.stack(
        [g[:, y : y + size, x : x + size] for g, (y, x) in zip(grown, corners, strict=True)]
    )


def _lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


@torch.no_grad()
def sample_sheet(model: CycleGAN, pair: DomainPair, columns: int = SAMPLE_COLUMNS) -> np.ndarray:
    """uint8 [6 * S, columns * S]: held-out A, A->B, A->B->A, B, B->A, B->A->B (one per row)."""
    was_training = model.training
    model.eval()
    a = pair.heldout_a.images[_spread(pair.heldout_a, columns)]
    b = pair.heldout_b.images[_spread(pair.heldout_b, columns)]
    ab = model.g_ab(a)
    ba = model.g_ba(b)
    rows = [a, ab, model.g_ba(ab), b, ba, model.g_ab(ba)]
    model.train(was_training)
    sheet = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)  # C x 6S x cS
    pixels = ((sheet + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).squeeze(-1).numpy()


def _spread(data: Any, columns: int) -> torch.Tensor:
    """One image per class in order when labelled, else the first ``columns``."""
    n = min(columns, len(data))
    if data.class_names:
        picks = [int(torch.nonzero(data.labels == k)[0]) for k in range(data.num_classes)]
        return torch.tensor(picks[:n])
    return torch.arange(n)


def train_cyclegan(cfg: CycleTrainConfig, pair: DomainPair | None = None) -> Path:
    """Run ``cfg.steps`` steps; return the path of the checkpoint to export:
    ``checkpoints/last.pt``, or ``best.pt`` with selection, ``average.pt`` with averaging."""
    if cfg.select_every > 0 and cfg.average_every > 0:
        raise ValueError("--select-every and --average-every exclude each other: keep one")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out_dir)
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (out / SAMPLES_DIR).mkdir(exist_ok=True)
    pair = pair or load_domain_pair(cfg.data_a, cfg.data_b, cfg.image_size, cfg.channels, cfg.pair)
    validation: ValidationSet | None = None
    if cfg.select_every > 0:
        pair, validation = carve_validation(pair, cfg.validation_per_class)
        torch.manual_seed(cfg.seed)  # training a classifier reseeded torch's generator
    mcfg = CycleGANConfig(
        image_size=cfg.image_size,
        channels=pair.train_a.channels,
        ngf=cfg.ngf,
        ndf=cfg.ndf,
        n_blocks=cfg.n_blocks,
        d_downsample=cfg.d_downsample,
    )
    model = CycleGAN(mcfg).train()
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(
        [*model.g_ab.parameters(), *model.g_ba.parameters()], cfg.lr, betas=betas
    )
    opt_d = torch.optim.Adam(
        [*model.d_a.parameters(), *model.d_b.parameters()], cfg.lr, betas=betas
    )
    pool_a, pool_b = ImagePool(cfg.pool_size, rng), ImagePool(cfg.pool_size, rng)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []  # the validation's, with selection
    best: dict[str, Any] | None = None  # the selected step's scores and weights
    average = WeightAverage()
    totals: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.decay_start)
        real_a = pair.train_a.images[
            torch.randint(len(pair.train_a), (cfg.batch_size,), generator=gen)
        ]
        real_b = pair.train_b.images[
            torch.randint(len(pair.train_b), (cfg.batch_size,), generator=gen)
        ]
        if cfg.load_size and cfg.load_size > cfg.image_size:
            real_a, real_b = jitter(real_a, cfg.load_size, gen), jitter(real_b, cfg.load_size, gen)
        stats = _step(model, opt_g, opt_d, pool_a, pool_b, real_a, real_b, cfg)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            count = cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every
            line = {"step": step + 1, **{k: round(v / count, 5) for k, v in totals.items()}}
            line["elapsed_s"] = round(time.perf_counter() - started, 1)
            history.append(line)
            totals.clear()
            write_metrics(out / METRICS_FILE, history)
            print(json.dumps(line), flush=True)
        if (step + 1) % cfg.sample_every == 0 or step + 1 == cfg.steps:
            Image.fromarray(sample_sheet(model, pair)).save(
                out / SAMPLES_DIR / f"step_{step + 1:06d}.png"
            )
        if validation is not None and _decay_sample(step + 1, cfg.select_every, cfg):
            line = {"step": step + 1, **validation.score(model)}
            scores.append(line)
            print(json.dumps(line), flush=True)
            if best is None or _lower(line) > _lower(best["scores"]):
                best = {"scores": line, "model": copy.deepcopy(model.state_dict())}
        if _decay_sample(step + 1, cfg.average_every, cfg):
            average.add(model.state_dict(), step + 1)
    elapsed = time.perf_counter() - started
    plot_loss_columns(history, out / LOSS_CURVE_FILE, "CycleGAN losses")
    path = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    run_facts = {
        "family": "cyclegan",
        "model_config": mcfg.to_dict(),
        "train_config": cfg.to_dict(),
        "elapsed_s": round(elapsed, 1),
        "cpu_s": round(time.process_time() - cpu_started, 1),
        "domains": [pair.name_a, pair.name_b],
        "class_names": pair.train_a.class_names,
    }
    save_checkpoint(
        path,
        {**run_facts, "model": model.state_dict(), "step": cfg.steps, "history": history},
    )
    if average.steps:
        average_path = out / CHECKPOINT_DIR / AVERAGE_CHECKPOINT
        save_checkpoint(
            average_path,
            {
                **run_facts,
                "model": average.weights,
                "step": cfg.steps,
                "history": history,
                "averaging": {"every": cfg.average_every, "steps": average.steps},
            },
        )
        print(f"averaged the weights of steps {average.steps}", flush=True)
        return average_path
    if best is None:
        return path
    chosen = best["scores"]["step"]
    best_path = out / CHECKPOINT_DIR / BEST_CHECKPOINT
    save_checkpoint(
        best_path,
        {
            **run_facts,
            "model": best["model"],
            "step": chosen,
            "history": [line for line in history if line["step"] <= chosen],
            "selection": {
                "chosen": best["scores"],
                "validation_per_class": cfg.validation_per_class,
                "scores": scores,
            },
        },
    )
    print(f"selected step {chosen} of {cfg.steps}: {json.dumps(best['scores'])}", flush=True)
    return best_path


class WeightAverage:
    """The running mean of weight snapshots (Izmailov et al. 2018's stochastic weight
    averaging; Yazici et al. 2019 average GAN generators): successive checkpoints of an
    adversarial run scatter around a good solution, and their mean sits nearer its middle.
    The networks have no batch-norm statistics to recompute (instance norm only)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.steps: list[int] = []

    def add(self, state: dict[str, torch.Tensor], step: int) -> None:
        self.steps.append(step)
        if len(self.steps) == 1:
            self.weights = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():
            self.weights[k] += (v.detach() - self.weights[k]) / len(self.steps)


def _decay_sample(step: int, every: int, cfg: CycleTrainConfig) -> bool:
    """Whether selection or averaging looks at (1-based) ``step``: every ``every`` steps of
    the learning-rate decay, and the last step."""
    in_decay = step > int(cfg.steps * cfg.decay_start)
    return every > 0 and in_decay and (step % every == 0 or step == cfg.steps)


def _lower(scores: dict[str, Any]) -> float:
    """What selection maximises: the worse of the two directions' validation digit kept."""
    return min(scores["val_kept_ab"], scores["val_kept_ba"])


def _step(
    model: CycleGAN,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    pool_a: ImagePool,
    pool_b: ImagePool,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    cfg: CycleTrainConfig,
) -> dict[str, float]:
    """One generator step (both G) and one discriminator step (both D).

    Each network runs once per phase on the images it sees concatenated (G_AB: A and, for
    the identity loss, B; G_BA: B, A, and the A cycle's A->B): instance norm keeps
    per-image statistics, so the losses are those of separate calls, in fewer, larger
    convolutions (docs/TRAINING.md, "6,000 steps, each network called once per phase")."""
    n = len(real_a)
    for p in (*model.d_a.parameters(), *model.d_b.parameters()):
        p.requires_grad_(False)
    fake_b, same_b = model.g_ab(torch.cat([real_a, real_b])).split(n)
    shown_b = recolour(fake_b) if cfg.augment_cycle_a else fake_b
    fake_a, same_a, back_a = model.g_ba(torch.cat([real_b, real_a, shown_b])).split(n)
    adv = _lsgan(model.d_b(fake_b), True) + _lsgan(model.d_a(fake_a), True)
    cycle_a = F.l1_loss(back_a, real_a)
    # Weighted 0, the B cycle is logged, not trained: its graph would cost a backward pass.
    with torch.set_grad_enabled(cfg.cycle_weight_b > 0):
        cycle_b = F.l1_loss(model.g_ab(fake_a), real_b)
    cycle = cfg.lambda_cycle * cycle_a
    if cfg.cycle_weight_b > 0:
        cycle = cycle + cfg.cycle_weight_b * cycle_b
    identity = F.l1_loss(same_b, real_b) + F.l1_loss(same_a, real_a)
    loss_g = adv + cycle + cfg.lambda_identity * cfg.lambda_cycle * identity
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    for p in (*model.d_a.parameters(), *model.d_b.parameters()):
        p.requires_grad_(True)
    real_scores_a, fake_scores_a = model.d_a(torch.cat([real_a, pool_a.query(fake_a)])).split(n)
    real_scores_b, fake_scores_b = model.d_b(torch.cat([real_b, pool_b.query(fake_b)])).split(n)
    loss_d_a = 0.5 * (_lsgan(real_scores_a, True) + _lsgan(fake_scores_a, False))
    loss_d_b = 0.5 * (_lsgan(real_scores_b, True) + _lsgan(fake_scores_b, False))
    opt_d.zero_grad(set_to_none=True)
    (loss_d_a + loss_d_b).backward()
    opt_d.step()
    return {
        "loss_g_adv": float(adv.detach()),
        "loss_cycle_a": float(cycle_a.detach()),
        "loss_cycle_b": float(cycle_b.detach()),
        "loss_identity": float(identity.detach()),
        "loss_d_a": float(loss_d_a.detach()),
        "loss_d_b": float(loss_d_b.detach()),
    }


def load_cyclegan(ckpt_path: str | Path) -> tuple[CycleGAN, dict[str, Any]]:
    """The trained four networks (eval mode) and the checkpoint they came from."""
    from training.checkpoint import CheckpointError

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run's checkpoints/last.pt"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file of the wrong format
        raise CheckpointError(
            f"{path} is not a gan-train checkpoint ({type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("family") != "cyclegan":
        raise CheckpointError(f"{ckpt_path} is not a CycleGAN checkpoint (gan-train cyclegan)")
    model = CycleGAN(CycleGANConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


# --- command line --------------------------------------------------------------------------


HELP = {
    "pair": f"embedded domain pair without folders: {' or '.join(EMBEDDED_PAIRS)}",
    "data_a": "a folder of domain-A images, with --data-b (default: embedded handwritten digits)",
    "data_b": "a folder of domain-B images, with --data-a (default: the pair's domain B)",
    "out_dir": "run directory: checkpoints, metrics, sample sheets",
    "image_size": "side of the square images",
    "channels": "1 or 3 to convert folder images (default: the first folder's own)",
    "load_size": "the paper's scale jitter: training images resized to this side, then cropped "
    "back to --image-size at a random place (default: none)",
    "ngf": "generator width at full resolution",
    "ndf": "discriminator width of its first block",
    "n_blocks": "residual blocks of the generator",
    "d_downsample": "stride-2 blocks of each discriminator: 1 judges 16x16 patches of a 32x32 "
    "image, 2 judges 26x26, 3 the whole image (docs/TRAINING.md)",
    "steps": "training steps (lr decays linearly over the second half)",
    "batch_size": "images of each domain per step",
    "lr": "Adam learning rate",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "lambda_cycle": "weight of the cycle loss (A->B->A, and B->A->B unless --lambda-cycle-b)",
    "lambda_cycle_b": "weight of the B->A->B cycle loss, when B carries more than A "
    "(MNIST-M's photos; docs/TRAINING.md)",
    "lambda_identity": "weight of the identity loss, times lambda-cycle",
    "augment_cycle_a": "recolour A->B (random channel order, half the time inverted) before "
    "B->A in the A cycle, so B->A learns strokes of any colour (docs/TRAINING.md)",
    "pool_size": "generated images kept for the discriminators",
    "decay_start": "fraction of the steps after which lr decays to 0",
    "select_every": "score both directions on a validation split of the training images every "
    "N steps while lr decays, and keep and export the best step, not the last (0: off; "
    "labelled domains only; docs/TRAINING.md)",
    "average_every": "export the mean of the weights taken every N steps while lr decays "
    "(stochastic weight averaging), not the last step's (0: off; docs/TRAINING.md)",
    "validation_per_class": "images per class set aside from each domain's training images for "
    "--select-every",
    "log_every": "steps between metrics lines",
    "sample_every": "steps between sample sheets",
    "seed": "random seed",
    "threads": "torch intra-op threads",
}


# Options whose default is None, so their type cannot be read from the default.
UNSET_BY_DEFAULT: dict[str, type] = {"channels": int, "load_size": int, "lambda_cycle_b": float}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = CycleTrainConfig()
    for f in fields(CycleTrainConfig):
        default = getattr(defaults, f.name)
        kind = UNSET_BY_DEFAULT.get(f.name) or {int: int, float: float}.get(type(default), str)
        flag = "--" + f.name.replace("_", "-")
        choices = {"pair": EMBEDDED_PAIRS, "d_downsample": (1, 2, 3)}.get(f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP[f.name])
            continue
        parser.add_argument(flag, type=kind, default=default, choices=choices, help=HELP[f.name])
    parser.add_argument(
        "--store",
        help="export the trained model into this store and evaluate it (default: no export)",
    )
    parser.add_argument(
        "--name", type=model_name, default="mnist-fonts-cyclegan", help="model name in the store"
    )
    parser.add_argument(
        "--no-evaluate", action="store_true", help="skip the evaluation after export"
    )


def run(args: argparse.Namespace) -> int:
    cfg = CycleTrainConfig(**{f.name: getattr(args, f.name) for f in fields(CycleTrainConfig)})
    command = "gan-train " + " ".join(sys.argv[1:])
    ckpt = train_cyclegan(cfg)
    print(f"checkpoint: {ckpt}")
    if args.store:
        from training.cyclegan_export import export_cyclegan

        version_dir = export_cyclegan(ckpt, args.store, args.name, command=command)
        print(f"exported: {version_dir}")
        if not args.no_evaluate:
            from training.translation_eval import evaluate_translator

            result = evaluate_translator(version_dir, threads=cfg.threads)
            print(json.dumps(result, indent=2))
    return 0
