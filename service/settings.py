"""Service settings: environment variables (prefix ``GAN_SERVE_``) overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_STORE = Path(__file__).resolve().parent.parent / "model_store"


class Settings(BaseSettings):
    """Every knob of the service. Defaults suit one CPU box; see docs/SERVICE.md."""

    model_config = SettingsConfigDict(env_prefix="GAN_SERVE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to bind")
    model_store: Path | None = Field(
        default=None,
        description="model_store directory; default ./model_store, else the one beside the package",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="auto: CUDA when it really runs here, else the CPU"
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="HTTP front-end processes sharing the port, beside one inference engine "
        "process; 0 = one per core; 1 = a single process with its own batcher",
    )
    inference: Literal["auto", "engine", "local"] = Field(
        default="auto",
        description="with several front ends, where batches run: engine = one batch queue in "
        "the engine process fed by every front end; local = each front end's own batcher (no "
        "IPC per request); auto = engine on CUDA, local on the CPU (docs/BENCHMARKS.md)",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime intra-op threads per session; 0 = all cores, shared out "
        "among front ends that run their own sessions (inference local)",
    )

    # Dynamic batcher.
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="images per inference")
    max_batch_delay_ms: float = Field(
        default=5.0,
        ge=0,
        description="with several inference workers: longest wait for a fuller batch while "
        "another batch runs (an idle model never waits)",
    )
    inference_workers: int = Field(default=1, ge=1, le=16, description="batches run at once")
    queue_limit: int = Field(
        default=4096,
        ge=1,
        description="queued images before 503: 64 connections x 64 images fit (docs/SERVICE.md)",
    )
    batch_buckets: Literal["auto", "exact", "pow2"] = Field(
        default="auto",
        description="pad batches to fixed sizes: pow2 on CUDA (auto), exact sizes on CPU",
    )
    cuda_graphs: bool = Field(default=False, description="capture CUDA graphs per bucket")

    max_pinned_versions: int = Field(
        default=2,
        ge=0,
        description="older versions kept loaded for /versions/{v}/ requests; 0 = only the default",
    )
    version_load_interval_s: float = Field(
        default=1.0, ge=0, description="least time between two loads of a pinned version"
    )

    # Requests.
    max_images_per_request: int = Field(default=256, ge=1, description="largest n")
    max_interpolation_steps: int = Field(default=64, ge=2, description="largest steps")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="request body limit")
    max_input_pixels: int = Field(
        default=1 << 22, ge=1, description="largest image (width x height) a translate accepts"
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="default queue deadline")
    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level for PNG")
    encode_threads: int = Field(default=2, ge=1, description="threads encoding large bodies")
    fast_path: bool = Field(
        default=True,
        description="serve plain GET .../generate queries without FastAPI's per-request work",
    )

    # Connections (service/server_limits.py).
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="longest wait for a request head (408 after)"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="longest wait for a request body once its head is in"
    )
    keep_alive_timeout_s: int = Field(default=5, ge=1, description="idle keep-alive connections")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="request line + headers")
    max_connections: int = Field(
        default=2048, ge=1, description="open connections; more are answered 503 and closed"
    )

    # Lifecycle.
    warmup: bool = Field(default=True, description="run every batch size once before ready")
    watch_interval_s: float = Field(default=0.0, ge=0, description="poll the store; 0 = off")
    drain_timeout_s: float = Field(default=30.0, gt=0, description="SIGTERM drain limit")
    drain_grace_s: float = Field(
        default=0.0, ge=0, description="keep /readyz at 503 at least this long before exiting"
    )
    admin_token: str | None = Field(
        default=None,
        description="bearer token for reload and version loads (GAN_SERVE_ADMIN_TOKEN; never a "
        "flag, which ps would show); unset = those routes answer loopback clients only",
    )
    admin_token_file: Path | None = Field(
        default=None, description="file holding the admin token (e.g. a mounted secret)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values admin routes accept besides loopback names "
        "(a DNS-rebinding guard); the token, when set, is checked too",
    )
    max_in_flight: int = Field(
        default=1024,
        ge=1,
        description="requests handled at once; more get 503 before their body is read",
    )
    refusal_backoff_ms: float = Field(
        default=100.0,
        ge=0,
        le=10_000,
        description="after a 503 answered from a request's head, read that connection's next "
        "request this much later, so clients resending at once cannot starve admitted work",
    )
    loop_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="how many nice steps below the batches a front end's event loop runs, so "
        "admitted work finishes first under a flood (service/priority.py); 0 = same priority",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log verbosity"
    )

    def front_ends(self) -> int:
        """The number of HTTP front ends: ``workers``, or one per core this process may use
        (its CPU affinity, and in a container its cgroup CPU limit)."""
        return self.workers or usable_cores()

    def resolved_admin_token(self) -> str | None:
        """The admin token from the environment, else from ``admin_token_file``."""
        if self.admin_token:
            return self.admin_token
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text(encoding="utf-8").strip() or None
        return None

    def resolved_model_store(self) -> Path:
        """GAN_SERVE_MODEL_STORE, else ./model_store if present, else the one beside the package."""
        if self.model_store is not None:
            return Path(self.model_store)
        local = Path.cwd() / "model_store"
        if local.is_dir():
            return local
        return PACKAGE_STORE


def usable_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    container's ``cpus`` limit), which affinity alone does not show."""
    import math
    import os

    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))
