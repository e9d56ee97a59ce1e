"""The parent process of a multi-process service: starts, watches and stops its children.

Children: one inference engine (:mod:`service.engine`) and ``workers`` HTTP front ends that
share the listening socket the parent bound. Both are forked from this parent, which holds no
threads and imports no inference code. A child that exits unexpectedly is started again (its
metrics' live gauges are dropped); the front ends' requests on a crashed engine fail with 503
at once and the front ends report not ready until the new engine has loaded and warmed.

SIGTERM (or Ctrl-C): the front ends drain first (every accepted request is answered), then
the engine stops, then the parent exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .settings import Settings

log = logging.getLogger("gan_serve.supervisor")

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # a child that keeps failing is restarted slower
STABLE_AFTER_S = 10.0  # a child that lived this long starts its backoff afresh


@dataclass
class Child:
    """One supervised process and how to start it again."""

    role: str  # "engine" or "front end N"
    target: Callable[[], None]
    process: multiprocessing.Process | None = None
    started_at: float = 0.0
    failures: int = 0


class Supervisor:
    """Runs ``front_ends`` front ends and one engine until SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, sock: socket.socket, front_ends: int) -> None:
        self.settings = settings
        self.sock = sock
        self.run_dir = Path(tempfile.mkdtemp(prefix="gan-serve-"))
        self.metrics_dir = str(self.run_dir / "metrics")
        os.mkdir(self.metrics_dir)
        self.engine_path = str(self.run_dir / "engine.sock")
        self._context = multiprocessing.get_context("fork")
        self._stopping = False
        self.children = [Child("engine", self._engine)]
        self.children += [Child(f"front end {i}", self._front_end) for i in range(front_ends)]

    # --- child entry points (run after fork) -------------------------------------------

    def _engine(self) -> None:
        from .engine import run_engine

        _as_child("gan-serve-infer")
        run_engine(self.settings, self.engine_path, self.metrics_dir)

    def _front_end(self) -> None:
        from .__main__ import serve_front_end

        _as_child("gan-serve-http")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = serve_front_end(
            self.settings, self.sock, self.engine_path, self.metrics_dir, supervised=True
        )
        os._exit(code)

    # --- supervision ----------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        process = self._context.Process(target=child.target, name=child.role, daemon=False)
        process.start()
        child.process, child.started_at = process, time.monotonic()
        log.info("%s started (pid %d)", child.role, process.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "%d front ends and one inference engine on %s:%d",
            len(self.children) - 1,
            self.settings.host,
            self.settings.port,
        )
        try:
            for child in self.children:
                self._start(child)
            while not self._stopping:
                self._watch_once()
            return self._shutdown()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch_once(self) -> None:
        sentinels = {c.process.sentinel: c for c in self.children if c.process is not None}
        for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=0.2):
            if self._stopping:
                return
            child = sentinels[sentinel]
            self._restart(child)

    def _restart(self, child: Child) -> None:
        assert child.process is not None
        child.process.join()
        pid, code = child.process.pid, child.process.exitcode
        self._mark_dead(pid)
        lived = time.monotonic() - child.started_at
        child.failures = 1 if lived > STABLE_AFTER_S else child.failures + 1
        delay = RESTART_BACKOFF_S[min(child.failures, len(RESTART_BACKOFF_S)) - 1]
        log.warning(
            "%s (pid %s) exited with %s after %.1fs; starting it again in %.1fs",
            child.role,
            pid,
            code,
            lived,
            delay,
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(0.05)
        if not self._stopping:
            self._start(child)

    def _mark_dead(self, pid: int | None) -> None:
        if pid is None:
            return
        from .metrics import mark_process_dead

        mark_process_dead(pid, self.metrics_dir)

    def _shutdown(self) -> int:
        """Front ends drain first (their requests still need the engine), then the engine."""
        front_ends = [c for c in self.children if c.role != "engine"]
        engine = self.children[0]
        drain_limit = self.settings.drain_timeout_s + self.settings.drain_grace_s + 5.0
        clean = self._stop(front_ends, drain_limit)
        clean = self._stop([engine], self.settings.drain_timeout_s + 5.0) and clean
        self.sock.close()
        log.info("stopped")
        return 0 if clean else 1

    def _stop(self, children: list[Child], limit: float) -> bool:
        """SIGTERM, wait up to ``limit`` seconds, SIGKILL what is left; True if none needed it."""
        live = [c.process for c in children if c.process is not None and c.process.is_alive()]
        for process in live:
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + limit
        clean = True
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning(
                    "%s (pid %d) did not stop in time; killing it", process.name, process.pid
                )
                process.kill()
                process.join(5)
                clean = False
        return clean


def _as_child(name: str) -> None:
    """Linux: the kernel kills this child if the parent dies (even by SIGKILL), so no front end
    or engine outlives its service; ``name`` is what ps, top and /proc/PID/comm show."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
