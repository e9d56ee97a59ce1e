"""Where the service's event loop spends its time: run ``python -m service`` under pyinstrument
on the server core, drive it with wrk, and add up the sampled time by package.

``python -m bench.profile_service [--model mnist-cdcgan] [--workload single] [--connections 64]``
prints the table and writes ``profile.html`` (pyinstrument's tree) under ``--out``.
pyinstrument samples the main thread: the event loop, where HTTP parsing, routing, validation,
seed-to-latent and response writing happen; inference and encoding run on worker threads and
are timed by the service's own histograms instead.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import run_wrk
from bench.models import REPO_ROOT, resolve_model
from bench.procs import LOOPBACK, cpu_layout, free_port, http_status, pinned
from bench.systems import service_workloads

OTHER = "other (stdlib, built-ins)"
GROUPS = {
    "HTTP/1.1 protocol (uvicorn + httptools or h11)": ("h11", "httptools", "uvicorn"),
    "ASGI framework (FastAPI + Starlette + pydantic)": ("fastapi", "starlette", "pydantic"),
    "asyncio event loop": ("asyncio", "selectors.py"),
    "service code": ("service",),
    "numpy (seed-to-latent)": ("numpy",),
    "prometheus_client": ("prometheus_client",),
}


def group_of(path: str) -> str:
    """The package a sampled frame belongs to, by its file path."""
    tail = path.split("site-packages/")[-1] if "site-packages/" in path else path
    tail = tail.split("/lib/python3")[-1]
    for group, prefixes in GROUPS.items():
        for prefix in prefixes:
            if f"/{prefix}/" in f"/{tail}" or tail.startswith(prefix) or f"/{prefix}" in tail:
                return group
    return OTHER


def request_time_by_group(session_path: Path) -> tuple[dict[str, float], float]:
    """Self time under uvicorn's per-request coroutine and the transport callbacks, by group;
    and the total sampled time of the main thread."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    totals: collections.Counter[str] = collections.Counter()

    def walk(frame, counting: bool, parent_path: str, owner: str) -> None:  # noqa: ANN001
        # pyinstrument keeps a function's own time in a child frame named "[self]"; time in
        # the standard library or built-ins goes to the nearest known package that called it.
        path = frame.file_path or parent_path
        counting = counting or (
            "uvicorn/protocols/http" in path or "asyncio/selector_events" in path
        )
        group = group_of(path)
        if group == OTHER:
            group = owner
        if counting and not frame.children and frame.function not in ("[await]", "[idle]"):
            totals[group] += frame.time
        for child in frame.children:
            walk(child, counting, path, group)

    walk(root, False, "", OTHER)
    return dict(totals), root.time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mnist-cdcgan")
    parser.add_argument("--workload", choices=("single", "bulk"), default="single")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "bench" / "profile")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "bench")
    args = parser.parse_args(argv)

    server_cpus, client_cpus = cpu_layout(None, None)
    os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
    model = resolve_model(args.model, args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    session = args.out / "profile.pyisession"
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {
        **os.environ,
        "GAN_SERVE_THREADS": str(len(server_cpus.split(","))),
        "GAN_SERVE_DEVICE": "cpu",
        "GAN_SERVE_LOG_LEVEL": "warning",
    }
    command = pinned(
        [
            sys.executable, "-m", "pyinstrument", "-r", "session", "-o", str(session),
            "-m", "service", "--host", LOOPBACK, "--port", str(port),
            "--model-store", str(model.store),
        ],
        server_cpus,
    )  # fmt: skip
    log = open(args.out / "service.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while http_status(url + "/readyz", 1.0) != 200:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"service did not start; see {args.out / 'service.log'}")
            time.sleep(0.2)
        workload = service_workloads(model)[args.workload]
        row = run_wrk(url, workload, args.connections, args.seconds, client_cpus)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()

    groups, sampled = request_time_by_group(session)
    requests = max(row["ok"], 1)
    print(
        f"{model.name} {args.workload} c={args.connections}: {row['req_per_s']:.0f} req/s,"
        f" p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms (under the profiler)"
    )
    print(f"event-loop time per request by package ({requests} requests, profiler included):")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / requests * 1e3:7.3f} ms  {group}")
    print(f"  {sum(groups.values()) / requests * 1e3:7.3f} ms  total")
    from pyinstrument.session import Session

    html = Session.load(str(session))
    from pyinstrument.renderers import HTMLRenderer

    (args.out / "profile.html").write_text(HTMLRenderer().render(html), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
