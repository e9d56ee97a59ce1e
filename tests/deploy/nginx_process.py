"""nginx from the distribution, run in the foreground on loopback with every file in a prefix."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType

import httpx

from tests.deploy.tools import DEPLOY, free_port, nginx_binary


def load_renderer() -> ModuleType:
    """deploy/nginx/render.py, imported by path (deploy/ is not a Python package)."""
    spec = importlib.util.spec_from_file_location("nginx_render", DEPLOY / "nginx" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_config(prefix: Path, upstreams: list[str], listen: str) -> Path:
    render = load_renderer()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render.render(render.local_values(upstreams, listen, prefix)))
    return conf


def nginx_test(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t``: parse the config and check it, without serving."""
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "t.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


class NginxProcess:
    """``nginx -g 'daemon off;'`` in front of ``upstreams``; stopped by PID on exit."""

    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = write_config(prefix, upstreams, f"127.0.0.1:{self.port}")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxProcess:
        cmd = [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf)]
        cmd += ["-e", str(self.prefix / "error.log"), "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited:\n{self.error_log()}"
            try:
                if httpx.get(f"{self.url}/nginx-healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.__exit__()
        raise TimeoutError(f"nginx did not answer:\n{self.error_log()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""
