"""A closed-loop HTTP load generator in Python, for hosts without ``wrk``: ``connections``
keep-alive connections, each sending its next request as soon as the previous answer is in,
spread over ``processes`` client processes so the client is not the one-core bottleneck. Loopback
only; every run stops by itself after ``seconds``."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.loadgen import Workload, _check_loopback, _read_response, http_request_bytes, summarise


def _raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass
class _Tally:
    """One client process's counts; latencies only of answers inside the window."""

    latencies: list[float] = field(default_factory=list)
    in_window: int = 0
    failures: int = 0
    sent: int = 0
    unfinished: int = 0


async def _closed_loop(
    host: str,
    port: int,
    workload: Workload,
    connections: int,
    window: tuple[float, float],
    timeout_s: float,
    seed_base: int,
) -> _Tally:
    """Connections loop until the window ends; answers count when they arrive inside it. A
    request still unanswered shortly after the end is cut, as wrk does, and counted apart."""
    warmup_s, seconds = window
    tally = _Tally()
    window_start = time.perf_counter() + warmup_s
    window_end = window_start + seconds

    async def connection_loop(index: int) -> None:
        seed = seed_base + index
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while time.perf_counter() < window_end:
                try:
                    if conn is None:
                        opening = asyncio.open_connection(host, port)
                        conn = await asyncio.wait_for(opening, timeout_s)
                    reader, writer = conn
                    path, body = workload.render(seed)
                    seed += connections
                    t0 = time.perf_counter()
                    tally.sent += 1
                    writer.write(http_request_bytes(host, port, workload.method, path, body))
                    status, _, keep = await asyncio.wait_for(_read_response(reader), timeout_s)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    tally.failures += 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    continue
                done = time.perf_counter()
                if not 200 <= status < 300:
                    tally.failures += 1
                elif window_start <= done <= window_end:
                    tally.in_window += 1
                    tally.latencies.append(done - t0)
                if not keep:
                    writer.close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    tasks = [asyncio.create_task(connection_loop(i)) for i in range(connections)]
    grace = min(timeout_s, 2.0)
    _, pending = await asyncio.wait(tasks, timeout=warmup_s + seconds + grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    tally.unfinished = len(pending)
    return tally


def _run_one_process(
    base_url: str,
    workload: Workload,
    connections: int,
    window: tuple[float, float],
    timeout_s: float,
    seed_base: int,
) -> _Tally:
    host, port = _check_loopback(base_url)
    _raise_open_files_limit(connections + 64)
    try:
        import uvloop  # the faster loop when installed: a lighter client

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_closed_loop(host, port, workload, connections, window, timeout_s, seed_base))


class LoadClient:
    """Client processes kept for a series of runs (starting them costs more than a short run);
    a context manager that closes them by itself."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = max(1, processes)
        self._pool: Any = None

    def __enter__(self) -> LoadClient:
        if self.processes > 1:
            self._pool = multiprocessing.get_context("spawn").Pool(self.processes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def run(
        self,
        base_url: str,
        workload: Workload,
        connections: int,
        seconds: float,
        timeout_s: float = 10.0,
        seed_base: int = 0,
        warmup_s: float = 0.0,
    ) -> dict[str, Any]:
        """The common result row (see :func:`bench.loadgen.summarise`) of a closed loop at
        ``connections``, split as evenly as it goes over the client processes: rates and
        latencies of the answers that arrived in the ``seconds`` after ``warmup_s``."""
        _check_loopback(base_url)
        processes = max(1, min(self.processes, connections))
        shares = [
            connections // processes + (i < connections % processes) for i in range(processes)
        ]
        jobs = [
            (base_url, workload, share, (warmup_s, seconds), timeout_s, seed_base + 1_000_000 * i)
            for i, share in enumerate(shares)
        ]
        if self._pool is None or processes == 1:
            parts = [_run_one_process(*jobs[0])]
        else:
            parts = self._pool.starmap(_run_one_process, jobs)
        latencies = np.concatenate([np.asarray(p.latencies, dtype=np.float64) for p in parts])
        return summarise(
            requests=sum(p.sent for p in parts),
            ok=sum(p.in_window for p in parts),
            errors=sum(p.failures for p in parts),
            seconds=seconds,
            latencies_ms=latencies * 1e3,
            images_per_request=workload.images_per_request,
            mode="closed",
            concurrency=connections,
            client_processes=processes,
            warmup_s=warmup_s,
            cut_at_end=sum(p.unfinished for p in parts),
        )


def run_closed_loop(
    base_url: str,
    workload: Workload,
    connections: int,
    seconds: float,
    processes: int = 1,
    timeout_s: float = 10.0,
    seed_base: int = 0,
    warmup_s: float = 0.0,
) -> dict[str, Any]:
    """One closed-loop run with its own client processes (see :class:`LoadClient`)."""
    with LoadClient(processes) as client:
        return client.run(base_url, workload, connections, seconds, timeout_s, seed_base, warmup_s)
