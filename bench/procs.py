"""Starting and stopping the systems under test: loopback only, pinned to given cores, stopped
by PID. Every wait is bounded in time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    """``command`` under ``taskset -c cpus`` when cores are given and taskset exists."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *command]
    return list(command)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET on ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


class ServerProcess:
    """A server child process: started pinned, ready when ``ready_url`` answers 200, stopped by
    PID (SIGTERM, then SIGKILL after a grace period). Output goes to ``log_path``."""

    def __init__(
        self,
        command: Sequence[str],
        ready_url: str,
        log_path: Path,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.command = pinned(command, cpus)
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.command} exited early; see {self.log_path}")
            if http_status(self.ready_url, timeout=1.0) == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"{self.ready_url} not ready in {self.start_timeout}s; see {self.log_path}"
        )

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process, SIGKILL it if it outlives ``grace`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=grace)
        self._log.close()
        self.process = None


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def cpu_layout(requested_server: str | None, requested_client: str | None) -> tuple[str, str]:
    """Server and load-generator cores: the first core for servers, the rest for the client,
    when the machine has two or more; otherwise both share everything."""
    cores = sorted(os.sched_getaffinity(0))
    if requested_server and requested_client:
        return requested_server, requested_client
    if len(cores) >= 2:
        return str(cores[0]), ",".join(str(c) for c in cores[1:])
    every = ",".join(str(c) for c in cores)
    return every, every
