"""The compute ceiling: in-process onnxruntime images/s per batch size, and encode cost per image.

A server can only add overhead to these figures, so they are the yardstick for everything else.
Run as ``python -m bench.ceiling MODEL_DIR`` (pinned with ``taskset`` by the bench) so that the
numbers come from the same cores and thread count as the servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.encoders import encode_npy, encode_png
from service.manifest import (
    LABEL_INPUT,
    LATENT_INPUT,
    Manifest,
    latent_from_seed,
    latents_from_seeds,
)

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def make_session(onnx_path: Path, threads: int) -> ort.InferenceSession:
    """One CPU session with a fixed intra-op thread count, as every server in the bench uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def model_feeds(manifest: Manifest, seeds: list[int]) -> dict[str, np.ndarray]:
    """Inputs for ``seeds``: latents by the documented seed rule, labels cycling through classes."""
    feeds = {LATENT_INPUT: latents_from_seeds(seeds, manifest.nz)}
    if manifest.conditional:
        feeds[LABEL_INPUT] = np.asarray(seeds, dtype=np.int64) % manifest.num_classes
    return feeds


def time_calls(call: Any, min_seconds: float, min_calls: int = 3, max_calls: int = 10_000) -> float:
    """Median seconds per call, after one untimed warm-up call; bounded in count and time."""
    call()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls:
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= min_calls and time.perf_counter() - start >= min_seconds:
            break
        if time.perf_counter() - start >= 10 * min_seconds and samples:
            break
    return statistics.median(samples)


def measure_ceiling(
    model_dir: Path,
    threads: int = 1,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    min_seconds: float = 0.5,
) -> dict[str, Any]:
    """Images/s per batch size plus PNG/npy encode and seed-to-latent cost per image."""
    manifest = Manifest.load(model_dir)
    session = make_session(manifest.onnx_path(model_dir), threads)
    per_batch: list[dict[str, float]] = []
    for size in batch_sizes:
        feeds = model_feeds(manifest, list(range(size)))
        seconds = time_calls(lambda f=feeds: session.run(None, f), min_seconds)
        per_batch.append(
            {"batch_size": size, "batch_ms": seconds * 1e3, "images_per_s": size / seconds}
        )

    images = session.run(None, model_feeds(manifest, list(range(64))))[0]
    png_s = time_calls(lambda: [encode_png(img) for img in images], min_seconds) / len(images)
    npy_s = time_calls(lambda: encode_npy(images), min_seconds) / len(images)
    latent_s = (
        time_calls(lambda: [latent_from_seed(s, manifest.nz) for s in range(64)], min_seconds) / 64
    )

    best = max(per_batch, key=lambda row: row["images_per_s"])
    batch1 = per_batch[0] if per_batch[0]["batch_size"] == 1 else None
    compute_best_s = 1.0 / best["images_per_s"]
    result: dict[str, Any] = {
        "model": manifest.name,
        "version": manifest.version,
        "image": [manifest.image_size, manifest.image_size, manifest.channels],
        "conditional": manifest.conditional,
        "threads": threads,
        "onnxruntime": ort.__version__,
        "per_batch": per_batch,
        "best_batch_size": best["batch_size"],
        "compute_images_per_s": best["images_per_s"],
        "png_encode_ms_per_image": png_s * 1e3,
        "npy_encode_ms_per_image": npy_s * 1e3,
        "latent_ms_per_image": latent_s * 1e3,
        # Bulk ceiling: compute alone at the best batch size (npy costs next to nothing).
        "bulk_images_per_s": 1.0 / (compute_best_s + npy_s),
        # Single-image ceiling: compute at the best batch size plus one PNG encode per image.
        "single_images_per_s": 1.0 / (compute_best_s + png_s),
    }
    if batch1 is not None:
        # Light-load floor: one image computed alone and encoded, with no server around it.
        result["batch1_plus_png_ms"] = batch1["batch_ms"] + png_s * 1e3
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path, help="a model_store/<name>/<version> directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    result = measure_ceiling(args.model_dir, args.threads, sizes, args.min_seconds)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
