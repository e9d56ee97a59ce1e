"""``ServiceProcess``: the real service (``python -m service``) on a free loopback port.

Starts the process, waits for ``/readyz``, and stops it by PID (SIGTERM, then SIGKILL).
Output goes to a log file whose text ``log_text()`` returns, for assertion messages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """Context manager running ``python -m service --port <free> --model-store <dir> *args``."""

    def __init__(
        self,
        model_store: str | Path,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        wait_ready: bool = True,
    ) -> None:
        self.model_store = Path(model_store)
        self.args = list(args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="gan-serve-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model-store",
            str(self.model_store),
            *self.args,
        ]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("GAN_SERVE_WORKERS", "1")  # one process unless a test asks for more
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        if self.wait_ready:
            try:
                self.wait_until_ready()
            except BaseException:
                self.stop()
                raise

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode} before ready:\n{self.log_text()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"service not ready in {self.ready_timeout}s:\n{self.log_text()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")
