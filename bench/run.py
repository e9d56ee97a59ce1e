"""One bench run: for each model, the ceiling, then every server under the same load, then
ratios, targets and the report files. Every step is bounded in time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Workload, run_open_loop, run_wrk
from bench.models import BenchModel
from bench.procs import pinned
from bench.systems import RunningSystem, histogram_means, start_naive, start_service

SYSTEMS = ("ceiling", "service", "naive", "torchserve")


@dataclass(frozen=True)
class Plan:
    """How long and how hard to push; ``quick`` keeps the whole run under a minute."""

    seconds: float = 3.0
    warmup_seconds: float = 1.0
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    bulk_concurrency: tuple[int, ...] = (1, 8, 64, 256)
    open_fractions: tuple[float, ...] = (0.25, 0.5)  # of the ceiling's single-image rate
    ceiling_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    ceiling_min_seconds: float = 0.3
    timeout_s: float = 30.0
    # TorchServe configurations tried: (workers, threads per worker, batch_size,
    # max_batch_delay_ms), one grid per layout; the best of each grid is then run at every
    # concurrency. Pinned: one core for the server; whole machine: every core.
    torchserve_grid: tuple[tuple[int, int, int, int], ...] = (
        (1, 1, 64, 5),
        (1, 1, 1, 0),
        (1, 1, 8, 2),
        (2, 1, 16, 5),
    )
    torchserve_grid_whole: tuple[tuple[int, int, int, int], ...] = (
        (2, 1, 32, 5),
        (2, 1, 8, 2),
        (1, 2, 64, 5),
        (4, 1, 16, 5),
    )
    torchserve_grid_concurrency: int = 64
    torchserve_grid_seconds: float = 2.0
    # Whole machine: the service's single-image req/s against its number of front ends and
    # where batches run (inference: engine = one shared queue, local = per front end).
    scaling: tuple[tuple[int, str], ...] = ((1, "auto"), (2, "engine"), (2, "local"))
    scaling_concurrency: int = 64


QUICK_PLAN = Plan(
    seconds=1.0,
    warmup_seconds=1.0,
    concurrency=(1, 8),
    bulk_concurrency=(1, 8),
    open_fractions=(0.1,),
    ceiling_batch_sizes=(1, 8, 64),
    ceiling_min_seconds=0.05,
    timeout_s=10.0,
    torchserve_grid=((1, 1, 64, 5),),
    torchserve_grid_whole=((2, 1, 32, 5),),
    torchserve_grid_concurrency=8,
    torchserve_grid_seconds=1.0,
    scaling_concurrency=8,
)


@dataclass
class Context:
    """Where things run and where their output goes. Layout ``whole``: nothing pinned, servers
    and load generator share every core (``server_cpus``/``client_cpus`` None); ``pinned``:
    servers on their cores, load generators on the others."""

    work: Path
    server_cpus: str | None
    client_cpus: str | None
    threads: int
    systems: tuple[str, ...] = SYSTEMS
    layout: str = "pinned"
    wrk_threads: int = 1
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def logs(self) -> Path:
        return self.work / "logs"


def measure_ceiling(model: BenchModel, plan: Plan, ctx: Context) -> dict[str, Any]:
    """The ceiling in a child process on the server cores, with the servers' thread count."""
    command = pinned(
        [
            sys.executable,
            "-m",
            "bench.ceiling",
            str(model.version_dir),
            "--threads",
            str(ctx.threads),
            "--min-seconds",
            str(plan.ceiling_min_seconds),
            "--batch-sizes",
            ",".join(map(str, plan.ceiling_batch_sizes)),
        ],
        ctx.server_cpus,
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_answer(system: RunningSystem, workload: Workload) -> None:
    """One request before the load: the body must be the image format the workload asks for."""
    path, body = workload.render(seed=12345)
    request = urllib.request.Request(
        system.url + path,
        data=body.encode() if body else None,
        method=workload.method,
        headers={"Content-Type": "application/json"} if body else {},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
    magic = b"\x89PNG" if workload.name == "single" else b"\x93NUMPY"
    if not payload.startswith(magic):
        raise RuntimeError(f"{system.name} answered {payload[:40]!r} to a {workload.name} request")


def _server_side(row: dict[str, Any], means: dict[str, float | None]) -> None:
    """Average batch size and the service's own mean timings (ms) for the run."""
    row["avg_batch"] = means.get("batch_images")
    if means:
        row["server_ms"] = {
            k: (v * 1e3 if v is not None else None) for k, v in means.items() if k != "batch_images"
        }


def measure_system(
    system: RunningSystem, model: BenchModel, plan: Plan, ctx: Context, ceiling: dict[str, Any]
) -> list[dict[str, Any]]:
    """Single images in closed loops, then in open loops, then bulk in closed loops (the
    heaviest last), each run starting from an idle server."""
    rows: list[dict[str, Any]] = []
    seed_base = 1_000_000
    single = system.workloads.get("single")
    bulk = system.workloads.get("bulk")
    plan_runs: list[tuple[Workload, str, float]] = []
    if single is not None:
        plan_runs += [(single, "closed", c) for c in plan.concurrency]
        plan_runs += [(single, "open", f) for f in plan.open_fractions]
    if bulk is not None:
        plan_runs += [(bulk, "closed", c) for c in plan.bulk_concurrency]
    warmed: set[str] = set()
    for workload, mode, level in plan_runs:
        if workload.name not in warmed:
            check_answer(system, workload)
            run_wrk(
                system.url,
                workload,
                8,
                plan.warmup_seconds,
                ctx.client_cpus,
                plan.timeout_s,
                wrk_threads=ctx.wrk_threads,
            )
            warmed.add(workload.name)
        settle(system, workload, plan.timeout_s)
        seed_base += 10_000_000
        before = system.histogram_totals()
        if mode == "closed":
            row = run_wrk(
                system.url,
                workload,
                int(level),
                plan.seconds,
                ctx.client_cpus,
                plan.timeout_s,
                seed_base,
                wrk_threads=ctx.wrk_threads,
            )
        else:
            row = run_open_loop(
                system.url,
                workload,
                level * ceiling["single_images_per_s"],
                plan.seconds,
                timeout_s=plan.timeout_s,
                seed_base=seed_base,
            )
            row["rate_fraction_of_ceiling"] = level
        _server_side(row, histogram_means(before, system.histogram_totals()))
        if system.name == "naive":
            row["avg_batch"] = float(workload.images_per_request)  # one run per request
        rows.append({"system": system.name, "workload": workload.name, **row})
        ctx.log(_line(system.name, workload.name, row))
    return rows


def settle(system: RunningSystem, workload: Workload, timeout_s: float) -> None:
    """Wait for work left over from the previous run (abandoned by the client but still
    computing) to finish: one request of the workload must come back, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            check_answer(system, workload)
            return
        except (OSError, RuntimeError):
            time.sleep(0.2)


def _line(system: str, workload: str, row: dict[str, Any]) -> str:
    level = f"c={row['concurrency']}" if row["mode"] == "closed" else f"rate={row['rate']:.0f}/s"
    p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
    return (
        f"  {system:10s} {workload:6s} {level:12s} {row['images_per_s']:9.1f} img/s "
        f"{row['req_per_s']:8.1f} req/s p99 {p99} ms errors {row['errors']}"
    )


def bench_model(model: BenchModel, plan: Plan, ctx: Context) -> dict[str, Any]:
    """Everything for one model, in a fixed order, each server stopped before the next starts."""
    started = time.monotonic()
    ctx.log(f"[{model.name}] ceiling")
    ceiling = measure_ceiling(model, plan, ctx)
    result: dict[str, Any] = {
        "model": model.name,
        "version": model.manifest.version,
        "origin": model.origin,
        "image": [model.manifest.image_size, model.manifest.image_size, model.manifest.channels],
        "conditional": model.manifest.conditional,
        "ceiling": ceiling,
        "runs": [],
        "configs": {},
    }
    starters: dict[str, Callable[[], AbstractContextManager[RunningSystem]]] = {
        "service": lambda: start_service(model, ctx.server_cpus, ctx.threads, ctx.logs),
        "naive": lambda: start_naive(model, ctx.server_cpus, ctx.threads, ctx.logs),
    }
    for name, start in starters.items():
        if name not in ctx.systems:
            continue
        ctx.log(f"[{model.name}] {name}")
        with start() as system:
            result["configs"][name] = system.config
            result["runs"] += measure_system(system, model, plan, ctx, ceiling)
    if "torchserve" in ctx.systems:
        from bench.torchserve import bench_torchserve

        service_cfg = result["configs"].get("service", {})
        ts = bench_torchserve(model, plan, ctx, ceiling, service_cfg)
        result["torchserve_grid"] = ts["grid"]
        result["configs"]["torchserve"] = ts["best"]
        result["runs"] += ts["runs"]
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def measure_scaling(model: BenchModel, plan: Plan, ctx: Context) -> list[dict[str, Any]]:
    """Single-image req/s of the service with 1, 2, ... front ends, same load, same cores, and
    the CPU time each kind of process spent per request."""
    rows: list[dict[str, Any]] = []
    for front_ends, inference in plan.scaling:
        settings = {"GAN_SERVE_WORKERS": str(front_ends), "GAN_SERVE_INFERENCE": inference}
        ctx.log(f"[{model.name}] scaling: {front_ends} front end(s), inference {inference}")
        with start_service(model, ctx.server_cpus, ctx.threads, ctx.logs, settings) as system:
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
            before = process_cpu_seconds(system.pid)
            row = run_wrk(
                system.url,
                single,
                plan.scaling_concurrency,
                plan.seconds,
                ctx.client_cpus,
                plan.timeout_s,
                wrk_threads=ctx.wrk_threads,
            )
            after = process_cpu_seconds(system.pid)
        answered = max(1, row["ok"])
        row["cpu_ms_per_request"] = {
            role: round((after[role] - before.get(role, 0.0)) / answered * 1e3, 3) for role in after
        }
        rows.append({"front_ends": front_ends, "inference": inference, **row})
        ctx.log(_line(f"service x{front_ends} {inference}", "single", row))
    return rows


def process_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a service process and its children, summed by role:
    ``service`` (a single process, or the supervising parent), ``gan-serve-http`` (front ends),
    ``gan-serve-infer`` (the inference engine); children name themselves (PR_SET_NAME)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}

    def add(p: int, role: str | None) -> None:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            return
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        key = role or (comm if comm.startswith("gan-serve-") else "service")
        totals[key] = totals.get(key, 0.0) + seconds
        for child in children:
            add(int(child), None)

    add(pid, "service")
    return totals


def machine_facts() -> dict[str, Any]:
    """What the figures came from: CPU model, cores, pinning, software versions, load."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "gpu": "none (not run)",
        "loadavg_start": list(os.getloadavg()),
    }


def asdict_plan(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
