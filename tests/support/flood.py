"""Goodput under a refusal flood: the real service, wrk on loopback, capacity beside flood.

Capacity is a closed loop of 16 connections asking for n=64 npy (enough to keep every front
end busy while 16 x 64 images stay far below the queue limit, so nothing is refused);
the flood is 256 connections asking the same at once, so most are refused with 503 and resend
at once, as a naive retry loop does. Goodput is the rate of 200 answers in each run.

``python -m tests.support.flood [--seconds 4] [-- SERVICE ARGS]`` prints both runs and their
ratio; the service runs as one process with one onnxruntime thread unless the arguments say
otherwise (``-- --workers 2``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.loadgen import Workload, run_wrk
from tests.support.server import REPO_ROOT, ServiceProcess

BULK = Workload(
    name="bulk",
    images_per_request=64,
    method="POST",
    path="/v1/models/mnist-cdcgan/generate",
    body='{"seed": {seed}, "n": 64, "format": "npy"}',
)
CAPACITY_CONNECTIONS = 16
FLOOD_CONNECTIONS = 256


def measure(
    seconds: float = 4.0, store: Path | None = None, service_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Capacity and flood runs against one service -> their rows and the ratio."""
    store = store or REPO_ROOT / "model_store"
    with ServiceProcess(store, "--threads", "1", *service_args) as service:
        # Warm-up: every front end up and serving (readiness needs only one), caches warm.
        run_wrk(service.url, BULK, CAPACITY_CONNECTIONS, 2.0, timeout_s=5)
        capacity = run_wrk(service.url, BULK, CAPACITY_CONNECTIONS, seconds, timeout_s=5)
        flood = run_wrk(service.url, BULK, FLOOD_CONNECTIONS, seconds, timeout_s=5)
    return {
        "capacity": capacity,
        "flood": flood,
        "goodput_ratio": flood["req_per_s"] / capacity["req_per_s"],
        "refusals_per_s": (flood["requests"] - flood["ok"]) / flood["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("service_args", nargs="*", help="after --: arguments for the service")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, service_args=tuple(args.service_args)), indent=1))


if __name__ == "__main__":
    main()
