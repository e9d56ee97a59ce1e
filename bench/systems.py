"""The servers under test, each started pinned to the server cores with the same onnxruntime
thread count, and the workloads each one speaks (same seeds, labels and image counts)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Workload
from bench.models import BenchModel
from bench.procs import LOOPBACK, ServerProcess, free_port, http_text, python_command

BULK_IMAGES = 64


@dataclass
class RunningSystem:
    """A started server: where to send load, what it understands, how to read its batch sizes."""

    name: str
    url: str
    workloads: dict[str, Workload]
    config: dict[str, Any] = field(default_factory=dict)
    metrics_url: str | None = None
    pid: int = 0

    def histogram_totals(self) -> dict[str, tuple[float, float]] | None:
        """(sum, count) of the service's own histograms, summed over labels (generate routes
        only for request latency), or None for servers that export none."""
        if self.metrics_url is None:
            return None
        totals: dict[str, list[float]] = {key: [0.0, 0.0] for key in SERVICE_HISTOGRAMS}
        pattern = re.compile(r"^(gan_serve_\w+)_(sum|count)(\{.*\})? (\S+)$")
        for line in http_text(self.metrics_url).splitlines():
            match = pattern.match(line)
            if not match:
                continue
            metric, part, labels, value = match.groups()
            for key, name in SERVICE_HISTOGRAMS.items():
                if metric == name and (key != "request" or "generate" in (labels or "")):
                    totals[key][0 if part == "sum" else 1] += float(value)
        return {key: (v[0], v[1]) for key, v in totals.items()}


# Histograms the service exports, read before and after each run to split its latency.
SERVICE_HISTOGRAMS = {
    "request": "gan_serve_request_duration_seconds",
    "queue_wait": "gan_serve_queue_wait_seconds",
    "inference": "gan_serve_inference_duration_seconds",
    "encode": "gan_serve_encode_duration_seconds",
    "batch_images": "gan_serve_batch_size_images",
}


def histogram_means(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None
) -> dict[str, float | None]:
    """Mean of each histogram over a run, from the deltas of its _sum and _count."""
    if before is None or after is None:
        return {}
    means: dict[str, float | None] = {}
    for key in SERVICE_HISTOGRAMS:
        total, count = after[key][0] - before[key][0], after[key][1] - before[key][1]
        means[key] = total / count if count > 0 else None
    return means


def service_workloads(model: BenchModel, prefix: str = "") -> dict[str, Workload]:
    name, classes = model.name, model.label_classes
    label = "&label={label}" if classes else ""
    return {
        "single": Workload(
            "single",
            1,
            "GET",
            f"{prefix}/v1/models/{name}/generate?seed={{seed}}{label}",
            "",
            classes,
        ),
        "bulk": Workload(
            "bulk",
            BULK_IMAGES,
            "POST",
            f"{prefix}/v1/models/{name}/generate",
            f'{{"n": {BULK_IMAGES}, "seed": {{seed}}, "format": "npy"}}',
            classes,
        ),
    }


def naive_workloads(model: BenchModel) -> dict[str, Workload]:
    classes = model.label_classes
    label = "&label={label}" if classes else ""
    return {
        "single": Workload("single", 1, "GET", f"/generate?seed={{seed}}{label}", "", classes),
        "bulk": Workload(
            "bulk",
            BULK_IMAGES,
            "POST",
            "/generate",
            f'{{"n": {BULK_IMAGES}, "seed": {{seed}}, "format": "npy"}}',
            classes,
        ),
    }


def torchserve_workloads(model: BenchModel) -> dict[str, Workload]:
    """TorchServe's handler takes one image per request: the single workload only."""
    classes = model.label_classes
    body = '{"seed": {seed}, "label": {label}}' if classes else '{"seed": {seed}}'
    return {"single": Workload("single", 1, "POST", f"/predictions/{model.name}", body, classes)}


@contextlib.contextmanager
def start_service(
    model: BenchModel, cpus: str, threads: int, logs: Path, settings: dict[str, str] | None = None
) -> Iterator[RunningSystem]:
    """``python -m service`` on the model's own store, configured through its environment;
    with its defaults it runs one front end per core it may use (one when pinned to one)."""
    port = free_port()
    env = {
        "GAN_SERVE_HOST": LOOPBACK,
        "GAN_SERVE_PORT": str(port),
        "GAN_SERVE_MODEL_STORE": str(model.store),
        "GAN_SERVE_DEVICE": "cpu",
        "GAN_SERVE_THREADS": str(threads),
        "GAN_SERVE_LOG_LEVEL": "warning",
        **(settings or {}),
    }
    url = f"http://{LOOPBACK}:{port}"
    command = python_command(
        "-m", "service", "--port", str(port), "--model-store", str(model.store)
    )
    log = logs / f"service-{model.name}.log"
    with ServerProcess(command, url + "/readyz", log, cpus, env) as server:
        yield RunningSystem(
            "service",
            url,
            service_workloads(model),
            service_config(env),
            url + "/metrics",
            server.pid,
        )


def service_config(env: dict[str, str]) -> dict[str, Any]:
    """The batching settings the service runs with (its defaults unless the bench set them)."""
    from service.settings import Settings

    keys = (
        "workers",
        "max_batch_size",
        "max_batch_delay_ms",
        "inference_workers",
        "queue_limit",
        "threads",
    )
    settings = Settings(
        **{k: env[f"GAN_SERVE_{k.upper()}"] for k in keys if f"GAN_SERVE_{k.upper()}" in env}
    )
    config = {k: getattr(settings, k) for k in keys}
    config["front_ends"] = settings.workers or "one per core"
    return config


@contextlib.contextmanager
def start_naive(model: BenchModel, cpus: str, threads: int, logs: Path) -> Iterator[RunningSystem]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    command = python_command(
        "-m",
        "bench.naive_server",
        str(model.version_dir),
        "--port",
        str(port),
        "--threads",
        str(threads),
    )
    with ServerProcess(command, url + "/healthz", logs / f"naive-{model.name}.log", cpus):
        yield RunningSystem("naive", url, naive_workloads(model), {"threads": threads})
