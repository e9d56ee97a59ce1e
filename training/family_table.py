"""The table of every model in a store, one row per model, for docs/EVALUATION.md.

``python -m training.family_table [model_store]`` prints a markdown table: family, conditional
accuracy, Fréchet distance with its real floor, CAS with the real-trained accuracy, Inception
Score with the real digits', training time, generator parameters, ONNX size, and in-process
images/s (ONNX Runtime, one thread, batches of 256, the best of 3 passes over 2,048 seeds;
measured now on this machine, so it varies with the machine and its load). The other columns
come from the manifests, as ``gan-train evaluate --write`` recorded them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx

from service.manifest import Manifest, version_dirs
from training.evaluate import GeneratorRunner, balanced_labels

THROUGHPUT_IMAGES = 2048
THROUGHPUT_BATCH = 256


def generator_parameters(onnx_path: Path) -> int:
    """Number of values in the graph's initializers (the generator's weights after folding)."""
    model = onnx.load(str(onnx_path))
    return int(sum(np.prod(init.dims) for init in model.graph.initializer))


def images_per_second(version_dir: Path) -> float:
    runner = GeneratorRunner(version_dir)
    seeds = np.arange(THROUGHPUT_IMAGES)
    labels = balanced_labels(THROUGHPUT_IMAGES, runner.manifest.num_classes or 1)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        runner.generate(seeds, labels, batch=THROUGHPUT_BATCH)
        best = min(best, time.perf_counter() - start)
    return THROUGHPUT_IMAGES / best


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def row(version_dir: Path) -> str:
    m = Manifest.load(version_dir)
    ev = m.evaluation
    onnx_path = m.onnx_path(version_dir)
    seconds = m.training.get("wall_time_s") or m.training.get("elapsed_s") or 0
    cas = f"{_pct(ev['cas'])} / {_pct(ev['cas_real_trained_accuracy'])}" if "cas" in ev else "n/a"
    cells = [
        f"`{m.name}`",
        m.family or "dcgan",
        _pct(ev.get("conditional_accuracy")),
        f"{ev['frechet_distance']:.1f} / {ev['frechet_distance_real_floor']:.1f}",
        cas,
        f"{ev['inception_score']:.2f} / {ev['inception_score_real']:.2f}",
        f"{seconds / 60:.1f} min",
        f"{generator_parameters(onnx_path) / 1e6:.2f} M",
        f"{onnx_path.stat().st_size / 1e6:.1f} MB",
        f"{images_per_second(version_dir):,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | family | cond. accuracy | Fréchet distance / real floor | CAS / real-trained "
    "| IS / real IS | training time | G parameters | ONNX size | in-process images/s |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    store = Path(args[0] if args else "model_store")
    print(HEADER)
    for model_dir in sorted(p for p in store.iterdir() if p.is_dir()):
        versions = version_dirs(model_dir)
        # Noise-to-image generators only: translators and text-to-image models have their
        # own figures (EVALUATION.md), not these columns.
        if versions and Manifest.load(versions[max(versions)]).kind == "noise-to-image":
            print(row(versions[max(versions)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
