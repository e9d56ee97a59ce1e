"""TorchServe 0.12 on the same ONNX generator: a small grid of workers, batch size and delay,
then the best configuration under the same load as every other system."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.loadgen import run_wrk
from bench.models import BenchModel
from bench.systems import RunningSystem, torchserve_workloads


@contextlib.contextmanager
def pinned_children(cpus: str | None) -> Iterator[None]:
    """Processes started inside inherit ``cpus`` (TorchServe's JVM and its Python workers);
    None: every core of the machine."""
    before = os.sched_getaffinity(0)
    if cpus is None:
        every = set(range(os.cpu_count() or 1))
        os.sched_setaffinity(0, every)
    else:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def build_archive(model: BenchModel, work: Path) -> Path:
    """The .mar for the model under test, built once per model version and checksum."""
    from training.torchserve_archive import build_mar

    sha = model.manifest.artifact.sha256[:12]
    target = work / "mar" / f"{model.name}-{model.manifest.version}-{sha}" / f"{model.name}.mar"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        build_mar(model.version_dir, target)
    return target


@contextlib.contextmanager
def start_torchserve(
    model: BenchModel,
    mar: Path,
    workers: int,
    threads: int,
    batch_size: int,
    delay_ms: int,
    ctx: Any,
    queue_size: int = 1024,
) -> Iterator[RunningSystem]:
    """TorchServe on loopback with one configuration, on the server cores, with the servers'
    onnxruntime thread count and a job queue as deep as the service's queue limit."""
    from training.torchserve_runner import TorchServeProcess

    class BenchTorchServe(TorchServeProcess):
        """The runner's configuration plus a job queue as deep as the service's."""

        def config_text(self, model_store: Path) -> str:
            return super().config_text(model_store) + f"job_queue_size={queue_size}\n"

    config = {
        "workers": workers,
        "threads": threads,
        "batch_size": batch_size,
        "max_batch_delay_ms": delay_ms,
    }
    # The runner's own short temp workdir: TorchServe puts its workers' Unix sockets there,
    # and their paths must stay under 108 bytes.
    server = BenchTorchServe(
        mar,
        batch_size=batch_size,
        max_batch_delay_ms=delay_ms,
        workers=workers,
        handler_threads=threads,
        startup_timeout_s=90.0,
    )
    with pinned_children(ctx.server_cpus):
        server.start()
    try:
        system = RunningSystem("torchserve", server.inference_url, torchserve_workloads(model))
        system.config = {**config, "job_queue_size": queue_size}
        yield system
    finally:
        server.stop()


def bench_torchserve(
    model: BenchModel, plan: Any, ctx: Any, ceiling: dict[str, Any], service_cfg: dict[str, Any]
) -> dict[str, Any]:
    """Try each grid configuration briefly at one concurrency; run the best one in full."""
    from bench.run import check_answer, measure_system

    mar = build_archive(model, ctx.work)
    whole = ctx.layout == "whole"
    grid_configs = list(plan.torchserve_grid_whole if whole else plan.torchserve_grid)
    queue = int(service_cfg.get("queue_limit", 1024))
    grid: list[dict[str, Any]] = []
    for workers, threads, batch, delay in grid_configs if len(grid_configs) > 1 else ():
        ctx.log(
            f"[{model.name}] torchserve workers={workers} threads={threads} batch={batch}"
            f" delay={delay}ms"
        )
        with start_torchserve(model, mar, workers, threads, batch, delay, ctx, queue) as system:
            single = system.workloads["single"]
            check_answer(system, single)
            run_wrk(
                system.url,
                single,
                8,
                plan.warmup_seconds,
                ctx.client_cpus,
                plan.timeout_s,
                wrk_threads=ctx.wrk_threads,
            )
            row = run_wrk(
                system.url,
                single,
                plan.torchserve_grid_concurrency,
                plan.torchserve_grid_seconds,
                ctx.client_cpus,
                plan.timeout_s,
                wrk_threads=ctx.wrk_threads,
            )
        grid.append({**system.config, **row})
    if grid:
        usable = [g for g in grid if g["errors"] == 0] or grid
        best = max(usable, key=lambda g: g["images_per_s"])
        config = {k: best[k] for k in ("workers", "threads", "batch_size", "max_batch_delay_ms")}
    else:  # one configuration: no search, straight to the full runs
        workers, threads, batch, delay = grid_configs[0]
        config = {
            "workers": workers,
            "threads": threads,
            "batch_size": batch,
            "max_batch_delay_ms": delay,
        }
    ctx.log(f"[{model.name}] torchserve best {config}")
    queue = int(service_cfg.get("queue_limit", 1024))
    with start_torchserve(model, mar, **_args(config), ctx=ctx, queue_size=queue) as system:
        runs = measure_system(system, model, plan, ctx, ceiling)
    return {"grid": grid, "best": config, "runs": runs}


def _args(config: dict[str, Any]) -> dict[str, int]:
    return {
        "workers": config["workers"],
        "threads": config["threads"],
        "batch_size": config["batch_size"],
        "delay_ms": config["max_batch_delay_ms"],
    }
