"""Train a ProGAN or BigGAN on the embedded MNIST digits: ``python -m training.families.runner``.

A deliberately small loop: seeded data order per epoch, one family step per batch, the
checkpoint format :mod:`training.export` reads (plus ``family``), a sample grid per epoch.
On CPU a run is bitwise reproducible for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training.data import load_embedded_mnist
from training.families import FAMILIES, family_module

CHECKPOINT = "checkpoints/last.pt"


def _settings(name: str, overrides: dict[str, Any]) -> Any:
    cls = getattr(family_module(name), FAMILIES[name].settings)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{name} has no setting {sorted(unknown)}; known: {sorted(known)}")
    return cls(**overrides)


def fit(
    family: str,
    out_dir: str | Path,
    *,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    threads: int | None = 1,
    model: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    steps_per_epoch: int | None = None,
) -> Path:
    """Train and return the checkpoint path."""
    if threads:
        torch.set_num_threads(threads)
    module = family_module(family)
    spec = FAMILIES[family]
    out = Path(out_dir)
    train_data, _ = load_embedded_mnist(32)
    cfg = getattr(module, spec.config)(
        image_size=32, channels=1, num_classes=train_data.num_classes, **(model or {})
    )
    train_settings = _settings(family, settings or {})
    torch.manual_seed(seed)
    step = getattr(module, spec.step)(cfg, train_settings, torch.device("cpu"))
    torch.manual_seed(seed + 1)
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    cpu_start = time.process_time()
    n = len(train_data)
    per_epoch = n // batch_size if steps_per_epoch is None else steps_per_epoch
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            stats = step.train_step(train_data.images[idx], train_data.labels[idx])
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if hasattr(step, "finish_epoch"):
            step.finish_epoch(batch_size)
        epoch_s = time.perf_counter() - start
        elapsed += epoch_s
        row = {
            "epoch": epoch + 1,
            "step": step.step,
            **{k: round(v / per_epoch, 5) for k, v in sums.items()},
            "epoch_s": round(epoch_s, 2),
            "elapsed_s": round(elapsed, 2),
            "cpu_s": round(time.process_time() - cpu_start, 2),
        }
        history.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    ckpt = {
        "family": family,
        "model_config": cfg.to_dict(),
        "train_config": {
            "family": family,
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "threads": threads,
            "steps_per_epoch": steps_per_epoch,
            **dataclasses.asdict(train_settings),
        },
        **step.state_dict(),
        "epoch": epochs,
        "class_names": list(train_data.class_names),
        "history": history,
        "elapsed_s": elapsed,
        "cpu_s": time.process_time() - cpu_start,
    }
    path = out / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--model", default="{}", help="model config overrides (JSON)")
    parser.add_argument("--settings", default="{}", help="training settings overrides (JSON)")
    args = parser.parse_args(argv)
    path = fit(
        args.family,
        args.out_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        model=json.loads(args.model),
        settings=json.loads(args.settings),
        steps_per_epoch=args.steps_per_epoch,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
