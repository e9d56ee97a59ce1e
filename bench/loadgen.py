"""Load generators: ``wrk`` with a Lua script for closed loops at a fixed number of connections,
and a lean asyncio client for open loops with Poisson arrivals (latency counted from each
request's scheduled start, so a slow server cannot hide its queue). Both send only to loopback
and stop by themselves after a bounded time and count."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.procs import LOOPBACK, pinned

LUA_SCRIPT = Path(__file__).with_name("lua") / "bench.lua"
BODIES_SCRIPT = Path(__file__).with_name("lua") / "bodies.lua"


@dataclass(frozen=True)
class Workload:
    """One kind of request, as templates in which ``{seed}`` and ``{label}`` are filled per call."""

    name: str  # "single" (n=1 PNG) or "bulk" (n=64 npy)
    images_per_request: int
    method: str
    path: str
    body: str = ""
    classes: int = 0  # label = seed % classes for conditional models

    def render(self, seed: int) -> tuple[str, str]:
        label = seed % self.classes if self.classes else 0
        fill = lambda t: t.replace("{seed}", str(seed)).replace("{label}", str(label))  # noqa: E731
        return fill(self.path), fill(self.body)


@dataclass(frozen=True)
class BodyRequest:
    """One kind of request whose bodies are binary files, sent as they are."""

    name: str
    images_per_request: int
    method: str
    path: str
    content_type: str
    body_files: tuple[Path, ...]


def _check_loopback(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.hostname not in (LOOPBACK, "localhost") or parts.port is None:
        raise ValueError(f"load is only sent to loopback with an explicit port, not {base_url}")
    return parts.hostname, parts.port


def summarise(
    *,
    requests: int,
    ok: int,
    errors: int,
    seconds: float,
    latencies_ms: np.ndarray | None,
    images_per_request: int,
    pcts: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The common result row: counts, rates and latency percentiles in milliseconds."""
    row: dict[str, Any] = {
        "requests": requests,
        "ok": ok,
        "errors": errors,
        "seconds": round(seconds, 3),
        "req_per_s": ok / seconds if seconds > 0 else 0.0,
        "images_per_s": ok * images_per_request / seconds if seconds > 0 else 0.0,
    }
    if pcts is None and latencies_ms is not None and len(latencies_ms):
        pcts = {f"p{p}_ms": float(np.percentile(latencies_ms, p)) for p in (50, 90, 99)}
    row.update(pcts or {"p50_ms": None, "p90_ms": None, "p99_ms": None})
    row.update(extra)
    return row


def run_wrk(
    base_url: str,
    workload: Workload,
    connections: int,
    seconds: float,
    cpus: str | None = None,
    timeout_s: float = 10.0,
    seed_base: int = 0,
    wrk_threads: int = 1,
) -> dict[str, Any]:
    """A closed loop: ``connections`` connections, each sending its next request as soon as the
    previous answer arrives, for ``seconds`` seconds, from ``wrk_threads`` wrk threads (one per
    core the load generator has)."""
    script_args = [
        workload.method,
        workload.path,
        workload.body,
        str(workload.classes),
        str(seed_base),
    ]
    return _run_wrk_script(
        base_url,
        LUA_SCRIPT,
        script_args,
        workload.images_per_request,
        connections,
        seconds,
        cpus,
        timeout_s,
        wrk_threads,
    )


def run_wrk_bodies(
    base_url: str,
    request: BodyRequest,
    connections: int,
    seconds: float,
    cpus: str | None = None,
    timeout_s: float = 10.0,
    wrk_threads: int = 1,
) -> dict[str, Any]:
    """:func:`run_wrk` for requests whose bodies are binary files (images, multipart uploads),
    cycled through in order."""
    script_args = [request.method, request.path, request.content_type]
    script_args += [str(path) for path in request.body_files]
    return _run_wrk_script(
        base_url,
        BODIES_SCRIPT,
        script_args,
        request.images_per_request,
        connections,
        seconds,
        cpus,
        timeout_s,
        wrk_threads,
    )


def _run_wrk_script(
    base_url: str,
    script: Path,
    script_args: list[str],
    images_per_request: int,
    connections: int,
    seconds: float,
    cpus: str | None,
    timeout_s: float,
    wrk_threads: int,
) -> dict[str, Any]:
    """wrk with one of our Lua scripts; its BENCH_JSON line as a result row."""
    _check_loopback(base_url)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package 'wrk')")
    command = pinned(
        [
            wrk,
            f"-t{max(1, min(wrk_threads, connections))}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            base_url,
            "--",
            *script_args,
        ],
        cpus,
    )
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        tail = f"{done.stdout[-500:]} {done.stderr[-500:]}"
        raise RuntimeError(f"wrk failed ({done.returncode}): {tail}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    ok = raw["requests"] - raw["errors_status"]
    pcts = {f"p{p}_ms": raw[f"p{p}_us"] / 1e3 for p in (50, 90, 99)} if ok else None
    return summarise(
        requests=raw["requests"] + raw["errors_timeout"],
        ok=ok,
        errors=errors,
        seconds=raw["duration_us"] / 1e6,
        latencies_ms=None,
        images_per_request=images_per_request,
        pcts=pcts,
        mode="closed",
        concurrency=connections,
        error_kinds={k[len("errors_") :]: v for k, v in raw.items() if k.startswith("errors_")},
    )


# --- open loop --------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() != "close"


def http_request_bytes(host: str, port: int, method: str, path: str, body: str) -> bytes:
    payload = body.encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if payload:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


async def _open_loop(
    host: str,
    port: int,
    build: Callable[[int], bytes],
    arrivals: np.ndarray,
    max_connections: int,
    timeout_s: float,
) -> tuple[list[float], int, int, float]:
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter()

    async def one(index: int, scheduled: float) -> None:
        nonlocal failures
        async with slots:
            conn = idle.pop() if idle else await asyncio.open_connection(host, port)
            reader, writer = conn
            try:
                writer.write(build(index))
                status, _, keep = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                failures += 1
                writer.close()
                return
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - start - scheduled)
            else:
                failures += 1
            if keep:
                idle.append(conn)
            else:
                writer.close()

    tasks = []
    for index, at in enumerate(arrivals):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, float(at))))
    done, pending = await asyncio.wait(tasks, timeout=timeout_s + 5)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    return latencies, failures + len(pending), len(tasks), elapsed


def run_open_loop(
    base_url: str,
    workload: Workload,
    rate: float,
    seconds: float,
    max_requests: int = 100_000,
    max_connections: int = 512,
    timeout_s: float = 10.0,
    seed_base: int = 0,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` requests/s for ``seconds`` (at most ``max_requests``); each
    latency runs from the request's scheduled arrival to its last response byte."""
    host, port = _check_loopback(base_url)
    rng = np.random.default_rng(rng_seed)
    count = min(max_requests, max(1, int(rate * seconds * 1.5) + 10))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=count))
    arrivals = arrivals[arrivals < seconds]

    def build(index: int) -> bytes:
        path, body = workload.render(seed_base + index)
        return http_request_bytes(host, port, workload.method, path, body)

    latencies, failures, sent, elapsed = asyncio.run(
        _open_loop(host, port, build, arrivals, max_connections, timeout_s)
    )
    return summarise(
        requests=sent,
        ok=len(latencies),
        errors=failures,
        seconds=max(seconds, elapsed) if failures else max(elapsed, 1e-9),
        latencies_ms=np.asarray(latencies) * 1e3,
        images_per_request=workload.images_per_request,
        mode="open",
        rate=rate,
    )
