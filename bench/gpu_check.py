"""The GPU path checked in one command: ``python -m bench.gpu_check OUT_DIR [--quick]`` (run it
through ``scripts/gpu_check.sh``, which installs missing wheels and exposes the CUDA libraries).

Every step is a function, timed; one that fails is reported with its reason and the next still
runs; one that cannot run here (no CUDA device) says so. The whole run keeps to a time budget
(8 minutes; ``--quick`` shrinks every grid to fit a minute on a CPU machine). Results go to
``OUT_DIR/results.json`` and ``OUT_DIR/report.md`` (plus ``plot.png`` when matplotlib is there and
``logs.tar.gz``), few enough files to come back from a remote host whole.

No step lets onnxruntime fall back to the CPU silently: a CUDA session counts only when
``session.get_providers()[0]`` is CUDA and its profile shows the model's nodes ran on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.closed_loop import LoadClient
from bench.procs import LOOPBACK, ServerProcess, free_port, http_text

# The service's model contract needs its dependencies (pydantic, ...), which a bare GPU host
# lacks until --wheels brings them: without them the steps that need the contract say so, and
# the environment and training steps still run.
SERVICE_IMPORT_ERROR: str | None = None
try:
    from bench.ceiling import model_feeds, time_calls
    from bench.models import shipped_family_dirs
    from bench.systems import service_workloads
    from service.manifest import IMAGE_OUTPUT, LABEL_INPUT, LATENT_INPUT, Manifest
    from service.settings import usable_cores
except ImportError as exc:
    SERVICE_IMPORT_ERROR = f"the service's modules do not import ({exc}): pass --wheels DIR"

    def usable_cores() -> int:
        return len(os.sched_getaffinity(0))

    def shipped_family_dirs() -> tuple[str, ...]:
        return ()


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The CUDA provider options the service itself uses (service/runtime.py).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
SERVICE_DEPENDENCIES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "fastapi_offline",
    "prometheus_client",
    "httptools",
    "uvloop",
)
PARITY_MAX_LEVELS = 1
PARITY_MIN_FRACTION = 0.999


class Skip(Exception):
    """A step that cannot run on this machine; ``data`` holds what it could still measure."""

    def __init__(self, reason: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.data = data or {}


class StepFailed(Exception):
    """A step that failed after measuring something worth keeping (``data``)."""

    def __init__(self, reason: str, data: dict[str, Any]) -> None:
        super().__init__(reason)
        self.data = data


@dataclass(frozen=True)
class Plan:
    """The grids and time budget of one run (``quick`` shrinks every one of them)."""

    quick: bool
    budget_s: float
    models: tuple[str, ...]  # every step, the service steps included
    family_models: tuple[str, ...]  # in process only: CUDA provider, ceiling and parity
    batch_sizes: tuple[int, ...]
    front_ends: tuple[int, ...]
    cpu_front_ends: tuple[int, ...]
    connections: dict[str, tuple[int, ...]]  # per workload, GPU service
    cpu_connections: dict[str, tuple[int, ...]]  # per workload, CPU service
    min_seconds: float  # per in-process timing
    point_seconds: float  # most seconds of load counted per grid point
    warmup_seconds: float  # load before each point's count starts
    train_steps: int
    client_processes: int
    training_reserve_s: float  # kept from the service steps for the three training steps

    @classmethod
    def for_host(cls, quick: bool, cores: int) -> Plan:
        if quick:
            return cls(
                quick=True,
                budget_s=180.0,  # a hard stop; about a minute is what it takes when idle
                models=("mnist-cdcgan",),
                family_models=(),
                batch_sizes=(1, 8, 64),
                front_ends=(1, 2),
                cpu_front_ends=(1, 2),
                connections={"single": (1, 16), "bulk": (4,)},
                cpu_connections={"single": (1, 16), "bulk": (4,)},
                min_seconds=0.05,
                point_seconds=0.5,
                warmup_seconds=0.2,
                train_steps=2,
                client_processes=2,  # the multi-process client runs too
                training_reserve_s=40.0,
            )
        grid = tuple(f for f in (1, 2, 4, 8, 16) if f <= max(cores, 1))
        return cls(
            quick=False,
            budget_s=480.0,
            models=("mnist-cdcgan", "dcgan64-rgb"),
            # Each family's graph on CUDA, cheap in process; the service grid stays at two
            # models so that every load point fits the budget.
            family_models=shipped_family_dirs(),
            batch_sizes=tuple(2**k for k in range(11)),  # 1 .. 1024
            front_ends=grid,
            cpu_front_ends=grid,
            connections={"single": (1, 64, 256, 1024), "bulk": (1, 64, 256, 1024)},
            # The CPU computes 64-image requests far slower: 1024 connections of them would
            # only measure the queue.
            cpu_connections={"single": (1, 64, 256, 1024), "bulk": (1, 64)},
            min_seconds=0.2,
            point_seconds=1.0,
            warmup_seconds=0.5,
            train_steps=30,
            client_processes=max(1, min(4, cores // 4)),
            training_reserve_s=100.0,
        )


@dataclass
class StepResult:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What steps share: the plan, folders, the run's deadline and earlier steps' results."""

    plan: Plan
    out_dir: Path
    work: Path
    started: float
    steps: dict[str, StepResult] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)  # name -> version dir
    served: tuple[str, ...] = ()  # the names of ``models`` the service steps load
    # Why there is no CUDA device (None: there is one); set first thing by the environment step.
    cuda_device: str | None = "not known: the environment step did not run"

    @property
    def logs(self) -> Path:
        path = self.work / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def seconds_left(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)

    def passed(self, name: str) -> bool:
        step = self.steps.get(name)
        return step is not None and step.status == "passed"


# --- helpers ------------------------------------------------------------------------------------


def run_command(
    command: list[str], log: Path, timeout_s: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``command`` with output to ``log``; (exit code, output tail). 124 on timeout."""
    with open(log, "wb") as handle:
        try:
            done = subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                timeout=timeout_s,
                check=False,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, log.read_text(errors="replace")[-3000:]


def session_options(threads: int = 0, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def open_session(
    onnx_path: Path, device: str, graphs: bool = False, profile_prefix: str | None = None
) -> Any:
    """A session on ``device``; on ``cuda`` it raises unless CUDA really is its first provider."""
    import onnxruntime as ort

    if device == "cpu":
        return ort.InferenceSession(
            str(onnx_path), session_options(0, profile_prefix), providers=[CPU]
        )
    options = dict(CUDA_OPTIONS, **({"enable_cuda_graph": "1"} if graphs else {}))
    session = ort.InferenceSession(
        str(onnx_path), session_options(0, profile_prefix), providers=[(CUDA, options), CPU]
    )
    if session.get_providers()[0] != CUDA:
        raise RuntimeError(
            f"onnxruntime fell back to {session.get_providers()} instead of running on CUDA"
        )
    return session


def cuda_device_present() -> str | None:
    """None when an NVIDIA device is visible, else why not (without importing any CUDA library,
    so the in-process checks below load CUDA the way the service does)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and "GPU" in done.stdout:
            return None
    if Path("/dev/nvidia0").exists():
        return None
    return "no CUDA device (nvidia-smi lists no GPU and /dev/nvidia0 is absent)"


# --- steps --------------------------------------------------------------------------------------


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def step_environment(ctx: Context) -> dict[str, Any]:
    """Versions, the CUDA libraries onnxruntime can load, and what the service needs to import."""
    import onnxruntime as ort

    ctx.cuda_device = cuda_device_present()

    data: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cores": usable_cores(),
        "onnxruntime": ort.__version__,
        "onnxruntime_path": str(Path(ort.__file__).parent),
        "available_providers": ort.get_available_providers(),
        "ld_library_path": [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p],
    }
    missing = [m for m in SERVICE_DEPENDENCIES if not _importable(m)]
    data["service_imports_missing"] = missing
    data["cuda_device"] = ctx.cuda_device or "present"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        data["gpus"] = done.stdout.strip().splitlines()
    if (
        not ctx.cuda_device
        and CUDA in ort.get_available_providers()
        and hasattr(ort, "preload_dlls")
    ):
        try:
            ort.preload_dlls()  # CUDA and cuDNN of the nvidia-* wheels, else the library path
            data["preload_dlls"] = "called"
        except Exception as exc:  # reported, not fatal: the library path may still serve
            data["preload_dlls"] = f"failed: {exc}"
    torch_probe = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': "
        "torch.__version__, 'torch_cuda': torch.version.cuda, 'cuda_available': c, "
        "'device': torch.cuda.get_device_name(0) if c else None}))"
    )
    code, out = run_command([sys.executable, "-c", torch_probe], ctx.logs / "torch.log", 120)
    data.update(json.loads(out.strip().splitlines()[-1]) if code == 0 else {"torch": out[-300:]})
    if missing:
        raise StepFailed(
            f"the service cannot start: {', '.join(missing)} not importable (--wheels DIR)", data
        )
    return data


def step_models(ctx: Context) -> dict[str, Any]:
    """The models under test, prepared in a child process: exporting one imports torch, whose
    CUDA libraries would otherwise be loaded here and hide a library path the service lacks."""
    if SERVICE_IMPORT_ERROR:
        raise RuntimeError(SERVICE_IMPORT_ERROR)
    script = (
        "import json, sys; from pathlib import Path; from bench.models import resolve_model; "
        "work = Path(sys.argv[1]); models = [resolve_model(s, work) for s in sys.argv[2:]]; "
        "print(json.dumps({m.name: [str(m.version_dir), m.origin] for m in models}))"
    )
    specs = [*ctx.plan.models, *ctx.plan.family_models]
    command = [sys.executable, "-c", script, str(ctx.work / "models"), *specs]
    code, out = run_command(command, ctx.logs / "models.log", 300)
    if code != 0:
        raise RuntimeError(f"preparing the models failed ({code}): {out[-800:]}")
    found = json.loads(out.strip().splitlines()[-1])
    ctx.models = {name: Path(directory) for name, (directory, _) in found.items()}
    ctx.served = tuple(found)[: len(ctx.plan.models)]
    return {
        name: {"dir": d, "origin": origin, "served": name in ctx.served}
        for name, (d, origin) in found.items()
    }


def _profile_providers(profile_file: str) -> dict[str, float]:
    """Microseconds of node time per execution provider in an onnxruntime profile."""
    events = json.loads(Path(profile_file).read_text())
    per_provider: dict[str, float] = {}
    for event in events:
        provider = event.get("args", {}).get("provider")
        if (
            event.get("cat") == "Node"
            and provider
            and event.get("name", "").endswith("_kernel_time")
        ):
            per_provider[provider] = per_provider.get(provider, 0.0) + float(event.get("dur", 0))
    return per_provider


def step_cuda_provider(ctx: Context) -> dict[str, Any]:
    """A CUDA session per model: CUDA first in its providers, its profile's node time on CUDA,
    and its time against the CPU's for the same batch."""
    import onnxruntime as ort

    if ctx.cuda_device:
        data: dict[str, Any] = {}
        if CUDA in ort.get_available_providers():
            # CUDA listed with no device: the fallback this check exists to catch.
            name, version_dir = next(iter(ctx.models.items()))
            try:
                open_session(Manifest.load(version_dir).onnx_path(version_dir), "cuda")
                data["fallback_detected"] = False
            except RuntimeError as exc:
                data["fallback_detected"] = str(exc)
        raise Skip(ctx.cuda_device, data)
    if CUDA not in ort.get_available_providers():
        raise RuntimeError(
            f"onnxruntime {ort.__version__} at {Path(ort.__file__).parent} has no CUDA provider: "
            "install onnxruntime-gpu (scripts/gpu_check.sh --wheels DIR)"
        )
    data = {}
    for name, version_dir in ctx.models.items():
        manifest = Manifest.load(version_dir)
        onnx_path = manifest.onnx_path(version_dir)
        prefix = str(ctx.work / f"profile-{name}")
        session = open_session(onnx_path, "cuda", profile_prefix=prefix)
        feeds = model_feeds(manifest, list(range(64)))
        for _ in range(3):
            session.run([IMAGE_OUTPUT], feeds)
        per_provider = _profile_providers(session.end_profiling())
        total = sum(per_provider.values()) or 1.0
        cuda_share = per_provider.get(CUDA, 0.0) / total
        gpu_s = time_calls(lambda s=session, f=feeds: s.run([IMAGE_OUTPUT], f), 0.2)
        cpu = open_session(onnx_path, "cpu")
        cpu_s = time_calls(lambda s=cpu, f=feeds: s.run([IMAGE_OUTPUT], f), 0.2)
        data[name] = {
            "providers": session.get_providers(),
            "node_time_us_by_provider": per_provider,
            "cuda_share_of_node_time": cuda_share,
            "batch64_ms": {"cuda": gpu_s * 1e3, "cpu": cpu_s * 1e3},
            "cuda_speedup_batch64": cpu_s / gpu_s,
        }
        if cuda_share < 0.9:
            raise RuntimeError(
                f"{name}: only {cuda_share:.0%} of node time ran on CUDA: {per_provider}"
            )
    return data


def _bind_device(
    session: Any, manifest: Manifest, size: int, device: str, graph: bool = False
) -> tuple[Any, Any]:
    """An IO binding with inputs and output in fixed buffers on ``device``, and the run that
    refreshes the inputs in place and copies the images to the host (what serving needs). With
    ``graph``, each batch size is its own CUDA graph (``gpu_graph_id``; 0 is reserved)."""
    import onnxruntime as ort

    z = ort.OrtValue.ortvalue_from_shape_and_type([size, manifest.nz], np.float32, device, 0)
    labels = (
        ort.OrtValue.ortvalue_from_shape_and_type([size], np.int64, device, 0)
        if manifest.conditional
        else None
    )
    shape = [size, manifest.image_size, manifest.image_size, manifest.channels]
    out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, device, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(LATENT_INPUT, z)
    if labels is not None:
        binding.bind_ortvalue_input(LABEL_INPUT, labels)
    binding.bind_ortvalue_output(IMAGE_OUTPUT, out)
    feeds = model_feeds(manifest, list(range(size)))
    run_options = ort.RunOptions()
    if graph:
        run_options.add_run_config_entry("gpu_graph_id", str(size))

    def run() -> np.ndarray:
        z.update_inplace(feeds[LATENT_INPUT])
        if labels is not None:
            labels.update_inplace(feeds[LABEL_INPUT])
        session.run_with_iobinding(binding, run_options)
        return out.numpy()

    return run, (z, labels, out)


def _run_rate(session: Any, manifest: Manifest, size: int, min_seconds: float) -> float:
    """Images/s of plain ``session.run`` with host arrays in and out, at batch ``size``."""
    feeds = model_feeds(manifest, list(range(size)))
    return size / time_calls(lambda: session.run([IMAGE_OUTPUT], feeds), min_seconds)


def step_ceiling(ctx: Context) -> dict[str, Any]:
    """In-process images/s per batch size: plain ``run``, IO binding, and IO binding with CUDA
    graphs (one graph per batch size), on CUDA when it passed its check, else on the CPU."""
    device = "cuda" if ctx.passed("cuda_provider") else "cpu"
    data: dict[str, Any] = {"device": device}
    if device == "cpu":
        data["why_cpu"] = ctx.steps["cuda_provider"].reason or "the CUDA check failed"
    for name, version_dir in ctx.models.items():
        manifest = Manifest.load(version_dir)
        onnx_path = manifest.onnx_path(version_dir)
        session = open_session(onnx_path, device)
        graph_session: Any = None
        graph_error = "CUDA graphs need the CUDA provider" if device == "cpu" else None
        if device == "cuda":
            try:
                graph_session = open_session(onnx_path, "cuda", graphs=True)
            except Exception as exc:  # reported per model; the other modes still run
                graph_error = f"{type(exc).__name__}: {exc}"
        rows = []
        for size in ctx.plan.batch_sizes:
            if ctx.seconds_left() < 0:
                rows.append({"batch_size": size, "skipped": "time budget spent"})
                continue
            row: dict[str, Any] = {"batch_size": size}
            row["run"] = _run_rate(session, manifest, size, ctx.plan.min_seconds)
            bound, _buffers = _bind_device(session, manifest, size, device)
            row["io_binding"] = size / time_calls(bound, ctx.plan.min_seconds)
            if graph_session is not None:
                try:
                    replay, _graph_buffers = _bind_device(
                        graph_session, manifest, size, device, graph=True
                    )
                    for _ in range(2):  # warm-up, then capture
                        replay()
                    row["cuda_graph"] = size / time_calls(replay, ctx.plan.min_seconds)
                except Exception as exc:
                    row["cuda_graph_error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
        measured = [r for r in rows if "run" in r]
        if not measured:
            raise RuntimeError("the time budget was spent before any batch size ran")
        best_mode, best_row = max(
            (
                (mode, r)
                for r in measured
                for mode in ("run", "io_binding", "cuda_graph")
                if mode in r
            ),
            key=lambda pair: pair[1][pair[0]],
        )
        data[name] = {
            "per_batch": rows,
            "best_images_per_s": best_row[best_mode],
            "best_mode": best_mode,
            "best_batch_size": best_row["batch_size"],
            "cuda_graph_error": graph_error,
            "cpu_best_images_per_s": best_row[best_mode],
        }
        if device == "cuda":  # the yardstick of the service on the CPU alone
            cpu = open_session(onnx_path, "cpu")
            data[name]["cpu_best_images_per_s"] = max(
                _run_rate(cpu, manifest, size, ctx.plan.min_seconds) for size in (64, 256)
            )
    return data


def step_parity(ctx: Context) -> dict[str, Any]:
    """CUDA against CPU images for the same latents: at most one level apart on >= 99.9% of
    pixels. Without CUDA, the CPU with and without graph optimisations stand in, so the
    comparison itself still runs."""
    import onnxruntime as ort

    data: dict[str, Any] = {}
    worst = 1.0
    for name, version_dir in ctx.models.items():
        manifest = Manifest.load(version_dir)
        onnx_path = manifest.onnx_path(version_dir)
        feeds = model_feeds(manifest, list(range(256)))
        reference = open_session(onnx_path, "cpu").run([IMAGE_OUTPUT], feeds)[0]
        if ctx.passed("cuda_provider"):
            other = open_session(onnx_path, "cuda").run([IMAGE_OUTPUT], feeds)[0]
        else:
            options = session_options()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            unoptimised = ort.InferenceSession(str(onnx_path), options, providers=[CPU])
            other = unoptimised.run([IMAGE_OUTPUT], feeds)[0]
        diff = np.abs(reference.astype(np.int16) - other.astype(np.int16))
        within = float(np.mean(diff <= PARITY_MAX_LEVELS))
        worst = min(worst, within)
        data[name] = {
            "images": int(reference.shape[0]),
            "fraction_within_1_level": within,
            "max_levels_apart": int(diff.max()),
            "mean_levels_apart": float(diff.mean()),
        }
    if not ctx.passed("cuda_provider"):
        raise Skip(
            f"{ctx.steps['cuda_provider'].reason or 'CUDA failed its check'}: compared the CPU "
            "with graph optimisations on and off instead (this exercises the comparison only)",
            data,
        )
    if worst < PARITY_MIN_FRACTION:
        raise RuntimeError(
            f"only {worst:.4%} of pixels within {PARITY_MAX_LEVELS} level (need "
            f"{PARITY_MIN_FRACTION:.1%})"
        )
    return data


def _combined_store(ctx: Context) -> Path:
    """One model store holding every served model under test, so one service serves them all."""
    store = ctx.work / "store"
    if store.exists():
        shutil.rmtree(store)
    for name in ctx.served:
        version_dir = ctx.models[name]
        shutil.copytree(version_dir, store / name / version_dir.name)
    return store


def measure_service(
    ctx: Context, device: str, front_ends: tuple[int, ...], connections: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
    """The service on ``device`` at each front-end count: every model, workload and number of
    connections for at most ``point_seconds`` each, within this step's share of the budget."""
    store = _combined_store(ctx)
    manifests = {name: Manifest.load(ctx.models[name]) for name in ctx.served}
    settings = {
        "GAN_SERVE_DEVICE": device,
        # The service's default, said here so the report shows it: one engine batch queue on
        # CUDA fed by every front end, each front end's own batcher on the CPU.
        "GAN_SERVE_INFERENCE": "auto",
        "GAN_SERVE_LOG_LEVEL": "warning",
        # Room for every connection's request in the queue: 1024 x 64 images.
        "GAN_SERVE_QUEUE_LIMIT": "131072",
        "GAN_SERVE_REQUEST_TIMEOUT_S": "60",
    }
    if device == "cuda":
        settings["GAN_SERVE_MAX_BATCH_SIZE"] = str(max(ctx.plan.batch_sizes))
    else:
        settings["CUDA_VISIBLE_DEVICES"] = ""  # the CPU alone, even on a GPU host
    points = len(front_ends) * len(manifests) * sum(len(c) for c in connections.values())
    left = ctx.seconds_left() - ctx.plan.training_reserve_s
    share = left / 2 if device == "cuda" and not ctx.plan.quick else left
    start_cost = 8.0 if not ctx.plan.quick else 3.0
    warmup = ctx.plan.warmup_seconds
    per_point = (share - len(front_ends) * start_cost) / points - warmup
    point_s = max(0.3, min(ctx.plan.point_seconds, per_point))
    step_deadline = time.monotonic() + share
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "settings": settings,
        "point_seconds": point_s,
        "warmup_seconds": warmup,
        "rows": rows,
    }
    with LoadClient(ctx.plan.client_processes) as client:
        for count in front_ends:
            if time.monotonic() > step_deadline:
                data.setdefault("skipped_front_ends", []).append(count)
                continue
            env = {**settings, "GAN_SERVE_WORKERS": str(count)}
            log = ctx.logs / f"service-{device}-{count}.log"
            with _started_service(store, env, log) as url:
                for name, manifest in manifests.items():
                    served = json.loads(http_text(f"{url}/v1/models/{name}"))
                    if served.get("provider") != device:
                        raise RuntimeError(
                            f"the service runs {name} on {served.get('provider')}, not {device}"
                        )
                    view = _BenchModelView(name, manifest.num_classes)
                    for workload in service_workloads(view).values():  # type: ignore[arg-type]
                        for conns in connections[workload.name]:
                            row = {"front_ends": count, "model": name, "workload": workload.name}
                            if time.monotonic() > step_deadline:
                                rows.append({**row, "concurrency": conns, "skipped": "time budget"})
                                continue
                            result = client.run(
                                url, workload, conns, point_s, timeout_s=60.0, warmup_s=warmup
                            )
                            rows.append({**row, **result})
    return data


@contextlib.contextmanager
def _started_service(store: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """``python -m service`` on loopback until ready (its URL), stopped by PID afterwards; a
    start that fails says why from the tail of its log."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    command = [sys.executable, "-m", "service", "--host", LOOPBACK, "--port", str(port)]
    command += ["--model-store", str(store)]
    server = ServerProcess(command, url + "/readyz", log, None, env, start_timeout=120)
    try:
        server.__enter__()
    except (RuntimeError, TimeoutError) as exc:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"{exc}: {tail}") from exc
    except BaseException:  # stopped while it starts: it must not outlive the check
        server.stop()
        raise
    try:
        yield url
    finally:
        server.stop()


@dataclass(frozen=True)
class _BenchModelView:
    """The two fields :func:`bench.systems.service_workloads` reads from a bench model."""

    name: str
    label_classes: int


def _against_ceiling(ctx: Context, rows: list[dict[str, Any]], key: str) -> None:
    """Each row's images/s as a fraction of the in-process ceiling ``key`` of its model."""
    ceiling = ctx.steps.get("ceiling")
    if ceiling is None or ceiling.status != "passed":
        return
    for row in rows:
        best = ceiling.data.get(row["model"], {}).get(key)
        if best and "images_per_s" in row:
            row["of_ceiling"] = row["images_per_s"] / best


def step_service_gpu(ctx: Context) -> dict[str, Any]:
    """The service with its engine on CUDA, at every front-end count, against the ceiling."""
    if not ctx.passed("cuda_provider"):
        raise Skip(ctx.steps["cuda_provider"].reason or "the CUDA check failed")
    data = measure_service(ctx, "cuda", ctx.plan.front_ends, ctx.plan.connections)
    _against_ceiling(ctx, data["rows"], "best_images_per_s")
    return _check_rows(data)


def step_service_cpu(ctx: Context) -> dict[str, Any]:
    """The same service on the CPU cores alone (CUDA hidden): the front-end scaling table."""
    data = measure_service(ctx, "cpu", ctx.plan.cpu_front_ends, ctx.plan.cpu_connections)
    _against_ceiling(ctx, data["rows"], "cpu_best_images_per_s")
    return _check_rows(data)


def _check_rows(data: dict[str, Any]) -> dict[str, Any]:
    measured = [r for r in data["rows"] if "ok" in r]
    failed = sum(r["errors"] for r in measured)
    if not measured:
        raise RuntimeError("no load point ran within the time budget")
    if failed:
        raise RuntimeError(f"{failed} failed requests over {len(measured)} load points")
    return data


def _train_command(out: Path, device: str, steps: int, *extra: str) -> list[str]:
    return [
        "-m",
        "training",
        "train",
        "--device",
        device,
        "--epochs",
        "1",
        "--steps-per-epoch",
        str(steps),
        "--batch-size",
        "64",
        "--out-dir",
        str(out),
        "--no-progress",
        *extra,
    ]


def _training_facts(log: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    head = re.search(r"\((\w+), (\d+) process\(es\), amp=(\w+)\)", log)
    if head:
        facts.update(device=head[1], processes=int(head[2]), amp=head[3] == "True")
    speed = re.findall(r"([\d.]+) img/s", log)
    if speed:
        facts["images_per_s"] = float(speed[-1])
    return facts


def step_training_amp(ctx: Context) -> dict[str, Any]:
    """A short training run on CUDA with mixed precision."""
    if ctx.cuda_device:
        raise Skip(ctx.cuda_device)
    out = ctx.work / "train-amp"
    command = [sys.executable, *_train_command(out, "cuda", ctx.plan.train_steps, "--force")]
    code, log = run_command(command, ctx.logs / "train-amp.log", max(60, ctx.seconds_left()))
    if code != 0:
        raise RuntimeError(f"training exited {code}: {log[-1200:]}")
    facts = _training_facts(log)
    if facts.get("device") != "cuda" or not facts.get("amp"):
        raise RuntimeError(f"training did not run on CUDA with AMP: {facts}")
    return facts


NCCL_PROBE = (
    "import os, torch, torch.distributed as d; r = int(os.environ['LOCAL_RANK']); "
    "torch.cuda.set_device(r); d.init_process_group('nccl'); "
    "t = torch.ones(1 << 20, device='cuda'); d.all_reduce(t); torch.cuda.synchronize(); "
    "print('nccl', d.get_backend(), d.get_world_size(), float(t[0])); d.destroy_process_group()"
)


def step_training_torchrun(ctx: Context) -> dict[str, Any]:
    """``torchrun --nproc_per_node 1``: training under it (CUDA, else the CPU), and on CUDA an
    NCCL all-reduce, since training joins a process group only when WORLD_SIZE > 1."""
    device = "cpu" if ctx.cuda_device else "cuda"
    out = ctx.work / "train-torchrun"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command = [*torchrun, "1", *_train_command(out, device, ctx.plan.train_steps, "--force")]
    env = {"OMP_NUM_THREADS": "1"}
    code, log = run_command(command, ctx.logs / "train-torchrun.log", 180, env)
    if code != 0:
        raise RuntimeError(f"torchrun training exited {code}: {log[-1200:]}")
    data: dict[str, Any] = {"training": _training_facts(log)}
    if ctx.cuda_device:
        raise Skip(f"{ctx.cuda_device}: trained under torchrun on the CPU, NCCL not tried", data)
    probe = [*torchrun, "1", "--no-python", sys.executable, "-c", NCCL_PROBE]
    code, log = run_command(probe, ctx.logs / "nccl.log", 120, env)
    match = re.search(r"nccl (\w+) (\d+) ([\d.]+)", log)
    if code != 0 or match is None or match[1] != "nccl":
        raise RuntimeError(f"the NCCL all-reduce under torchrun failed ({code}): {log[-1200:]}")
    data["nccl_all_reduce"] = {"backend": match[1], "world_size": int(match[2])}
    return data


def step_training_resume_cpu(ctx: Context) -> dict[str, Any]:
    """The checkpoint of the CUDA run (else the torchrun one) resumed for one more epoch on
    the CPU."""
    source = next(
        (
            ctx.work / run
            for run in ("train-amp", "train-torchrun")
            if (ctx.work / run / "checkpoints" / "last.pt").is_file()
        ),
        None,
    )
    if source is None:
        raise RuntimeError("no checkpoint to resume: both training steps failed")
    out = ctx.work / "train-resume"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    command = [sys.executable, *_train_command(out, "cpu", 2, "--resume", "--threads", "1")]
    command[command.index("--epochs") + 1] = "2"
    code, log = run_command(command, ctx.logs / "train-resume.log", 180)
    if code != 0 or "resumed from" not in log:
        raise RuntimeError(f"resume on the CPU exited {code}: {log[-1200:]}")
    return {"from": source.name, **_training_facts(log)}


STEPS: tuple[tuple[str, Callable[[Context], dict[str, Any]]], ...] = (
    ("environment", step_environment),
    ("models", step_models),
    ("cuda_provider", step_cuda_provider),
    ("ceiling", step_ceiling),
    ("parity", step_parity),
    ("service_gpu", step_service_gpu),
    ("service_cpu", step_service_cpu),
    ("training_amp", step_training_amp),
    ("training_torchrun", step_training_torchrun),
    ("training_resume_cpu", step_training_resume_cpu),
)
# Steps that cannot run without an earlier one.
NEEDS = {name: ("models",) for name, _ in STEPS[2:7]}


def run_step(ctx: Context, name: str, function: Callable[[Context], dict[str, Any]]) -> StepResult:
    """Run one step, timed; any exception becomes its reported reason, never the end of the run."""
    started = time.monotonic()
    missing = [n for n in NEEDS.get(name, ()) if not ctx.passed(n)]
    if missing:
        result = StepResult(name, "skipped", 0.0, f"needs {', '.join(missing)}, which did not pass")
    elif ctx.seconds_left() <= 0:
        result = StepResult(name, "skipped", 0.0, "the run's time budget was spent")
    else:
        try:
            data = function(ctx)
            result = StepResult(name, "passed", 0.0, "", data)
        except Skip as skip:
            result = StepResult(name, "skipped", 0.0, str(skip), skip.data)
        except StepFailed as failure:
            result = StepResult(name, "failed", 0.0, str(failure), failure.data)
        except Exception as exc:
            tail = traceback.format_exc(limit=3)
            result = StepResult(
                name, "failed", 0.0, f"{type(exc).__name__}: {exc}", {"traceback": tail}
            )
    result.seconds = round(time.monotonic() - started, 2)
    ctx.steps[name] = result
    line = f"gpu_check: {name}: {result.status} in {result.seconds:.1f} s {result.reason}"
    print(line[:400], flush=True)
    return result


def run_check(out_dir: Path, plan: Plan, work: Path) -> dict[str, Any]:
    """Every step in order, then results.json, report.md, the plot and the logs archive; a run
    stopped part-way (SIGTERM, Ctrl-C) still writes them for the steps that finished."""
    from bench.gpu_report import write_outputs

    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan=plan, out_dir=out_dir, work=work, started=time.monotonic())
    interrupted = None
    try:
        for name, function in STEPS:
            run_step(ctx, name, function)
    except (KeyboardInterrupt, SystemExit) as stop:
        interrupted = f"stopped by {type(stop).__name__} during the step after the last listed"
        raise
    finally:
        results = {
            "when_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "quick": plan.quick,
            "plan": asdict(plan),
            "total_seconds": round(time.monotonic() - ctx.started, 2),
            "interrupted": interrupted,
            "steps": {name: asdict(step) for name, step in ctx.steps.items()},
        }
        write_outputs(results, out_dir)
        with tarfile.open(out_dir / "logs.tar.gz", "w:gz") as archive:
            archive.add(ctx.logs, arcname="logs")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="where report.md and results.json go")
    parser.add_argument("--quick", action="store_true", help="every grid shrunk: about a minute")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated models: mnist-cdcgan, dcgan64-rgb or <name>/<version> folders "
        "(default: the shipped model and dcgan64-rgb; --quick: the shipped one)",
    )
    parser.add_argument(
        "--families",
        default=None,
        help="comma-separated <name>/<version> folders checked in process only (CUDA provider, "
        "ceiling, parity), not served; '' for none (default: every other shipped "
        "noise-to-image model; --quick: none)",
    )
    args = parser.parse_args(argv)
    # A stop signal unwinds like an error, so every started service is stopped by PID: they run
    # in their own process sessions, which outlive a killed parent.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan.for_host(args.quick, usable_cores())
    if args.models:
        plan = replace(plan, models=tuple(m for m in args.models.split(",") if m))
    if args.families is not None:
        plan = replace(plan, family_models=tuple(m for m in args.families.split(",") if m))
    if args.work is not None:
        results = run_check(args.out_dir, plan, args.work)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gan-serve-gpu-check-") as scratch:
            results = run_check(args.out_dir, plan, Path(scratch))
    statuses = [s["status"] for s in results["steps"].values()]
    print(
        f"gpu_check: {statuses.count('passed')} passed, {statuses.count('failed')} failed, "
        f"{statuses.count('skipped')} skipped in {results['total_seconds']:.0f} s; "
        f"see {args.out_dir / 'report.md'}"
    )
    return 1 if "failed" in statuses else 0


if __name__ == "__main__":
    raise SystemExit(main())
