"""A closed-loop HTTP load generator in Python, for hosts without ``wrk``: ``connections``
keep-alive connections, each sending its next request as soon as the previous answer is in,
spread over ``processes`` client processes so the client is not the one-core bottleneck. Loopback
only; every run stops by itself after ``seconds``."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from typing import Any

import numpy as np

from bench.loadgen import Workload, _check_loopback, _read_response, http_request_bytes, summarise


def _raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _closed_loop(
    host: str,
    port: int,
    workload: Workload,
    connections: int,
    seconds: float,
    timeout_s: float,
    seed_base: int,
) -> tuple[list[float], int, int, float]:
    latencies: list[float] = []
    failures = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def connection_loop(index: int) -> None:
        nonlocal failures, sent
        seed = seed_base + index
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
                reader, writer = conn
                path, body = workload.render(seed)
                seed += connections
                t0 = time.perf_counter()
                sent += 1
                writer.write(http_request_bytes(host, port, workload.method, path, body))
                status, _, keep = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                failures += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1
            if not keep:
                writer.close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(connection_loop(i) for i in range(connections)))
    return latencies, failures, sent, time.perf_counter() - start


def _run_one_process(
    base_url: str,
    workload: Workload,
    connections: int,
    seconds: float,
    timeout_s: float,
    seed_base: int,
) -> tuple[list[float], int, int, float]:
    host, port = _check_loopback(base_url)
    _raise_open_files_limit(connections + 64)
    try:
        import uvloop  # the faster loop when installed: a lighter client

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_closed_loop(host, port, workload, connections, seconds, timeout_s, seed_base))


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
    ) -> dict[str, Any]:
        """The common result row (see :func:`bench.loadgen.summarise`) of a closed loop at
        ``connections``, split as evenly as it goes over the client processes."""
        _check_loopback(base_url)
        processes = max(1, min(self.processes, connections))
        shares = [
            connections // processes + (i < connections % processes) for i in range(processes)
        ]
        jobs = [
            (base_url, workload, share, seconds, timeout_s, seed_base + 1_000_000 * i)
            for i, share in enumerate(shares)
        ]
        if self._pool is None or processes == 1:
            parts = [_run_one_process(*jobs[0])]
        else:
            parts = self._pool.starmap(_run_one_process, jobs)
        latencies = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts]) * 1e3
        return summarise(
            requests=sum(p[2] for p in parts),
            ok=len(latencies),
            errors=sum(p[1] for p in parts),
            seconds=max(p[3] for p in parts),
            latencies_ms=latencies,
            images_per_request=workload.images_per_request,
            mode="closed",
            concurrency=connections,
            client_processes=processes,
        )


def run_closed_loop(
    base_url: str,
    workload: Workload,
    connections: int,
    seconds: float,
    processes: int = 1,
    timeout_s: float = 10.0,
    seed_base: int = 0,
) -> dict[str, Any]:
    """One closed-loop run with its own client processes (see :class:`LoadClient`)."""
    with LoadClient(processes) as client:
        return client.run(base_url, workload, connections, seconds, timeout_s, seed_base)
