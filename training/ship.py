"""``gan-train ship``: the whole pipeline behind the shipped model.

train (the shipped configuration) -> export to ``model_store/<name>/<version>`` -> evaluate
against held-out real digits -> ``model_store/<name>.mar``. With ``--checkpoint`` the
training step is skipped and an existing checkpoint is shipped instead.

Exit status: 0 when the model meets the targets (conditional accuracy >= 95%, CAS >= 90%
of the real-trained accuracy), 1 when it was shipped but misses them, 2 on bad input.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from training.cli import model_name
from training.evaluate import evaluate_generator, render_report
from training.export import check_name_free, describe_serving, export_checkpoint
from training.torchserve_archive import build_mar

DEFAULT_NAME = "mnist-cdcgan"


def ship(
    *,
    store: str | Path = "model_store",
    name: str = DEFAULT_NAME,
    version: int | None = None,
    checkpoint: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    train_command: str | None = None,
    train_wall_time_s: float | None = None,
    samples: int = 5000,
    fid_samples: int = 1000,
    cas_samples: int = 4000,
    build_archive: bool = True,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Run the pipeline; returns (version directory, evaluation figures).

    The name is checked before training starts, so a run is never lost to a refusal.
    """
    from training.checkpoint import load_checkpoint
    from training.loop import TrainConfig, train

    provenance: dict[str, Any] = {}
    if checkpoint is None:
        cfg = TrainConfig(**(train_overrides or {}))
        check_name_free(store, name, cfg.to_dict(), force=force)
        started = time.perf_counter()
        checkpoint = train(cfg)
        train_wall_time_s = time.perf_counter() - started
        train_command = train_command or "gan-train ship"
    else:
        check_name_free(
            store, name, load_checkpoint(checkpoint).get("train_config", {}), force=force
        )
    if train_command:
        provenance["command"] = train_command
    if train_wall_time_s is not None:
        provenance["wall_time_s"] = round(float(train_wall_time_s), 1)
    version_dir = export_checkpoint(
        checkpoint,
        store,
        name,
        version=version,
        description=describe_checkpoint(checkpoint),
        extra_training=provenance,
    )
    result = evaluate_generator(
        version_dir,
        samples=samples,
        fid_samples=fid_samples,
        cas_samples=cas_samples,
        write=True,
    )
    if build_archive:
        build_mar(version_dir, Path(store) / f"{name}.mar")
    return version_dir, result


def describe_checkpoint(checkpoint: str | Path) -> str:
    """e.g. 'Class-conditional DCGAN generator of 32x32 MNIST digits (labels 0-9)'."""
    from training.checkpoint import load_checkpoint
    from training.families import get_family

    ckpt = load_checkpoint(checkpoint)
    family = get_family(ckpt.get("family", "dcgan"))
    cfg = ckpt["model_config"]
    size = f"{cfg['image_size']}x{cfg['image_size']}"
    data = "MNIST digits" if ckpt.get("train_config", {}).get("data") == "mnist" else "images"
    if cfg.get("num_classes"):
        names = ckpt.get("class_names") or []
        labels = f" (labels {names[0]}-{names[-1]})" if names else ""
        return f"Class-conditional {family.description} of {size} {data}{labels}"
    return f"Unconditional {family.description} of {size} {data}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--checkpoint",
        type=Path,
        default=None,
        help="ship this checkpoint, skipping training (default: train first)",
    )
    add("--store", type=Path, default=Path("model_store"), help="model store")
    add("--name", type=model_name, default=DEFAULT_NAME, help="model name in the store")
    add("--version", type=int, default=None, help="version number (default: the next free one)")
    add("--force", action="store_true", help="add a version to a name another run trained")
    add("--out-dir", default=None, help="training run folder (default: the training default)")
    add("--epochs", type=int, default=None, help="override the shipped epochs (default: 30)")
    add("--seed", type=int, default=None, help="override the training seed (default: 0)")
    add(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="training device (default: auto)",
    )
    add(
        "--train-command",
        default=None,
        help="with --checkpoint: the command that trained it (default: none recorded)",
    )
    add(
        "--train-wall-time",
        type=float,
        default=None,
        help="with --checkpoint: its training time in s (default: none recorded)",
    )
    add("--samples", type=int, default=5000, help="images for accuracy")
    add("--fid-samples", type=int, default=1000, help="images per Fréchet set")
    add("--cas-samples", type=int, default=4000, help="generated CAS training set")
    add("--no-mar", action="store_true", help="skip the TorchServe archive")


def run(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in {
            "out_dir": args.out_dir,
            "epochs": args.epochs,
            "seed": args.seed,
            "device": args.device,
        }.items()
        if value is not None
    }
    if args.checkpoint is not None and overrides:
        print("gan-train ship: training options do not apply with --checkpoint", file=sys.stderr)
        return 2
    version_dir, result = ship(
        store=args.store,
        name=args.name,
        version=args.version,
        checkpoint=args.checkpoint,
        train_overrides=overrides,
        train_command=(
            args.train_command
            if args.checkpoint is not None
            else "gan-train " + shlex.join(sys.argv[1:])
        ),
        train_wall_time_s=args.train_wall_time,
        samples=args.samples,
        fid_samples=args.fid_samples,
        cas_samples=args.cas_samples,
        build_archive=not args.no_mar,
        force=args.force,
    )
    from service.manifest import Manifest

    print(render_report(Manifest.load(version_dir), result))
    print(f"shipped {version_dir}")
    print(describe_serving(version_dir))
    if not result.get("meets_targets", False):
        print("gan-train ship: the model misses the targets (see the report)", file=sys.stderr)
        return 1
    return 0
