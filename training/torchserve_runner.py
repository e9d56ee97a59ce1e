"""Run TorchServe on loopback with one ``.mar`` loaded: for tests and benchmarks.

``TorchServeProcess`` writes its own ``config.properties`` (inference, management and
metrics on 127.0.0.1 free ports, token auth off, model API off, the model's batch size,
batch delay and workers), starts ``torchserve --start --foreground --ncs`` in a new process
group, waits until the model's workers are READY, and stops the whole group by its id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from training.torchserve_archive import mar_contents


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_mar_manifest(mar_path: Path) -> tuple[str, str]:
    """(model name, version) from the archive's own MAR-INF/MANIFEST.json."""
    import zipfile

    if "MAR-INF/MANIFEST.json" not in mar_contents(mar_path):
        raise ValueError(f"{mar_path} is not a TorchServe archive (no MAR-INF/MANIFEST.json)")
    with zipfile.ZipFile(mar_path) as archive:
        meta = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    return meta["model"]["modelName"], str(meta["model"]["modelVersion"])


class TorchServeError(RuntimeError):
    """TorchServe did not come up (the message carries the end of its log)."""


class TorchServeProcess:
    """Context manager: TorchServe serving one archive on 127.0.0.1.

    Attributes once started: ``inference_url``, ``management_url``, ``metrics_url``,
    ``predict_url`` (POST a request body here), ``model_name``, ``pid``, ``workdir``.
    """

    def __init__(
        self,
        mar_path: str | Path,
        *,
        batch_size: int = 8,
        max_batch_delay_ms: int = 5,
        workers: int = 1,
        response_timeout_s: int = 120,
        startup_timeout_s: float = 180.0,
        handler_threads: int = 0,
        job_queue_size: int = 100,
        workdir: str | Path | None = None,
    ):
        self.mar_path = Path(mar_path).resolve()
        self.model_name, self.model_version = _read_mar_manifest(self.mar_path)
        self.batch_size = batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.workers = workers
        self.response_timeout_s = response_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.handler_threads = handler_threads
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="torchserve-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.job_queue_size = job_queue_size
        ports = [free_port() for _ in range(5)]
        self.grpc_ports = (ports[3], ports[4])
        self.inference_url = f"http://127.0.0.1:{ports[0]}"
        self.management_url = f"http://127.0.0.1:{ports[1]}"
        self.metrics_url = f"http://127.0.0.1:{ports[2]}"

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model_name}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "torchserve.out"

    def config_text(self, model_store: Path) -> str:
        models = {
            self.model_name: {
                self.model_version: {
                    "defaultVersion": True,
                    "marName": self.mar_path.name,
                    "minWorkers": self.workers,
                    "maxWorkers": self.workers,
                    "batchSize": self.batch_size,
                    "maxBatchDelay": self.max_batch_delay_ms,
                    "responseTimeout": self.response_timeout_s,
                }
            }
        }
        lines = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            # gRPC is unused but always started: loopback and free ports, so instances coexist.
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.grpc_ports[0]),
            "grpc_management_port": str(self.grpc_ports[1]),
            "job_queue_size": str(self.job_queue_size),
            "model_store": str(model_store),
            "load_models": self.mar_path.name,
            "models": json.dumps(models),
            "disable_token_authorization": "true",
            "enable_model_api": "false",
            "install_py_dep_per_model": "false",
            "default_workers_per_model": str(self.workers),
            # A private temp dir keeps worker sockets apart from any other TorchServe.
            "vmargs": f"-Xmx1g -XX:+ExitOnOutOfMemoryError -Djava.io.tmpdir={self.workdir / 'tmp'}",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def start(self) -> TorchServeProcess:
        exe = shutil.which("torchserve")
        if exe is None:
            raise TorchServeError("torchserve is not installed: pip install -e '.[torchserve]'")
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        config.write_text(self.config_text(self.mar_path.parent), encoding="utf-8")
        env = dict(os.environ)
        env.update(
            LOG_LOCATION=str(self.workdir / "logs"),
            METRICS_LOCATION=str(self.workdir / "logs"),
            TMPDIR=str(self.workdir / "tmp"),  # TorchServe's pid file lives there
            TS_DISABLE_SYSTEM_METRICS="true",
            GAN_SERVE_TS_THREADS=str(self.handler_threads),
        )
        cmd = [
            exe,
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.mar_path.parent),
            "--ts-config",
            str(config),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends java + workers
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def model_status(self) -> list[dict]:
        url = f"{self.management_url}/models/{self.model_name}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TorchServeError(
                    f"torchserve exited with {self.proc.returncode}:\n{self._log_tail()}"
                )
            log = self._log_tail(500_000)
            if "Load model failed" in log or "Failed to load model" in log:
                raise TorchServeError(f"the model failed to load:\n{self._log_tail()}")
            try:
                described = self.model_status()
                workers = described[0].get("workers", [])
                ready = [w for w in workers if w.get("status") == "READY"]
                if len(ready) >= self.workers:
                    return
            except (urllib.error.URLError, OSError, ValueError, IndexError):
                pass
            time.sleep(0.5)
        raise TorchServeError(
            f"torchserve not ready after {self.startup_timeout_s:.0f}s:\n{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group TorchServe runs in, then SIGKILL what is left."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # java workers may outlive the launcher
            except ProcessLookupError:
                pass
            proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
