"""The GPU check's quick run on this machine, so the script cannot rot between GPU hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import STEPS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_check_reports_every_step_passed_or_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), str(out), "--quick"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert list(steps) == [name for name, _ in STEPS]
    for name, step in steps.items():
        assert step["status"] in ("passed", "skipped"), (name, step["reason"], done.stdout[-3000:])
        assert step["seconds"] >= 0
        if step["status"] == "skipped":
            assert len(step["reason"]) > 10, name  # says why, e.g. "no CUDA device"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # What runs on a CPU machine ran for real: the ceiling, and the service under load.
    ceiling = steps["ceiling"]["data"]
    assert ceiling["device"] in ("cpu", "cuda")
    rows = ceiling["mnist-cdcgan"]["per_batch"]
    assert [r["batch_size"] for r in rows] == [1, 8, 64]
    assert all(r["run"] > 0 and r["io_binding"] > 0 for r in rows)
    service = [r for r in steps["service_cpu"]["data"]["rows"] if "ok" in r]
    assert {(r["front_ends"], r["workload"]) for r in service} == {
        (f, w) for f in (1, 2) for w in ("single", "bulk")
    }
    assert all(r["ok"] > 0 and r["errors"] == 0 for r in service)
    assert steps["training_resume_cpu"]["status"] == "passed"
    if steps["cuda_provider"]["status"] == "skipped":
        assert "no CUDA device" in steps["cuda_provider"]["reason"]
        assert steps["service_gpu"]["status"] == "skipped"

    report = (out / "report.md").read_text()
    for name in steps:
        assert f"| {name} | {steps[name]['status']} |" in report
    assert (out / "logs.tar.gz").stat().st_size > 0
