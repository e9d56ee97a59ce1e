"""``gan-train train``: the command line of the training loop (:mod:`training.loop`).

Model, losses and loop live elsewhere: the families in :mod:`training.families`, the loop in
:mod:`training.loop`, checkpoints in :mod:`training.checkpoint`, the EMA in :mod:`training.ema`,
the grid and metrics in :mod:`training.logs`, DDP in :mod:`training.distributed`.
"""

from __future__ import annotations

import argparse
import os

from training.families import FAMILIES
from training.loop import TrainConfig, train
from training.model import IMAGE_SIZE_HELP


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``gan-train train``; defaults reproduce the shipped model."""
    d = TrainConfig()
    add = parser.add_argument
    add("--family", choices=FAMILIES, default=d.family, help="GAN family (model and losses)")
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
    add("--lr-d", type=float, default=None, help="D's learning rate (default: --lr)")
    add("--beta1", type=float, default=d.beta1, help="Adam beta1")
    add(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="target for real images (one-sided smoothing; 1.0 disables)",
    )
    add("--ema-decay", type=float, default=d.ema_decay, help="EMA of G's weights (0 disables)")
    add(
        "--lr-decay-start",
        type=float,
        default=d.lr_decay_start,
        help="fraction of the epochs after which both lrs fall linearly to 0 (1.0: constant)",
    )
    add(
        "--mode-seeking",
        type=float,
        default=d.mode_seeking,
        help="weight of the mode-seeking diversity term (0 disables)",
    )
    add(
        "--d-input-dropout",
        type=float,
        default=d.d_input_dropout,
        help="gan2014: dropout on the discriminator's input pixels",
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
        family=args.family,
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
        lr_d=args.lr_d,
        beta1=args.beta1,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema_decay,
        lr_decay_start=args.lr_decay_start,
        mode_seeking=args.mode_seeking,
        d_input_dropout=args.d_input_dropout,
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
