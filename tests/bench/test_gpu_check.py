"""The GPU check's quick run on this machine, so the script cannot rot between GPU hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import STEPS, Context, Plan, Skip, run_step
from bench.gpu_report import targets, write_outputs
from bench.models import shipped_family_dirs

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_check_reports_every_step_passed_or_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    family = shipped_family_dirs()[0]  # checked in process, not served
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), str(out), "--quick"]
        + ["--families", family],
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
    family_name = Path(family).parent.name
    assert steps["models"]["data"][family_name]["served"] is False
    assert ceiling[family_name]["per_batch"][0]["run"] > 0
    assert family_name in steps["parity"]["data"]
    assert {r["model"] for r in steps["service_cpu"]["data"]["rows"]} == {"mnist-cdcgan"}
    assert steps["training_resume_cpu"]["status"] == "passed"
    if steps["cuda_provider"]["status"] == "skipped":
        assert "no CUDA device" in steps["cuda_provider"]["reason"]
        assert steps["service_gpu"]["status"] == "skipped"

    report = (out / "report.md").read_text()
    for name in steps:
        assert f"| {name} | {steps[name]['status']} |" in report
    assert (out / "logs.tar.gz").stat().st_size > 0


def _context(tmp_path: Path) -> Context:
    import time

    return Context(Plan.for_host(True, 2), tmp_path, tmp_path, time.monotonic())


def test_a_failing_step_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    ctx = _context(tmp_path)

    def broken(_: Context) -> dict:
        raise ValueError("the probe answered nonsense")

    def not_here(_: Context) -> dict:
        raise Skip("no CUDA device (test)")

    assert run_step(ctx, "environment", broken).status == "failed"
    assert "ValueError: the probe answered nonsense" in ctx.steps["environment"].reason
    assert run_step(ctx, "models", not_here).status == "skipped"
    # A step that needs the models is skipped with that reason, not run on missing input.
    ceiling = run_step(ctx, "ceiling", lambda _: {"ran": True})
    assert ceiling.status == "skipped" and "needs models" in ceiling.reason
    assert run_step(ctx, "training_amp", lambda _: {"ran": True}).status == "passed"


def test_targets_say_met_or_missed_from_the_gpu_rows() -> None:
    def row(workload: str, front_ends: int, req_per_s: float, **extra: float) -> dict:
        base = {"model": "m", "workload": workload, "front_ends": front_ends, "concurrency": 64}
        return {**base, "ok": 1, "errors": 0, "req_per_s": req_per_s, **extra}

    rows = [
        row("single", 1, 1000.0),
        row("single", 2, 1800.0),
        row("bulk", 1, 10.0, of_ceiling=0.7),
    ]
    steps = {"service_gpu": {"status": "passed", "data": {"rows": rows}}}
    lines = "\n".join(targets(steps))
    assert "bulk >= 80% of the GPU ceiling: missed (best 70%)" in lines
    assert "m at 64 connections: 1: 1,000, 2: 1,800" in lines
    assert "zero failed requests: met" in lines
    rows[0]["errors"] = 3
    assert "zero failed requests: missed (3)" in "\n".join(targets(steps))
    skipped = {"service_gpu": {"status": "skipped", "data": {}}}
    assert targets(skipped) == ["- not measured: the service did not run on a GPU here"]


def test_report_draws_a_gpu_run(tmp_path: Path) -> None:
    """The report and plot of a run shaped as a GPU host's, which this machine cannot produce."""

    def step(status: str, data: dict, reason: str = "") -> dict:
        return {"name": "", "status": status, "seconds": 1.0, "reason": reason, "data": data}

    per_batch = [
        {"batch_size": b, "run": 100.0 * b, "io_binding": 150.0 * b, "cuda_graph": 200.0 * b}
        for b in (1, 2, 4)
    ]
    per_batch.append({"batch_size": 8, "run": 1.0, "io_binding": 1.0, "cuda_graph_error": "X"})
    ceiling = {
        "per_batch": per_batch,
        "best_images_per_s": 800.0,
        "best_mode": "cuda_graph",
        "best_batch_size": 4,
        "cuda_graph_error": None,
        "cpu_best_images_per_s": 50.0,
    }
    rows = [
        {"model": "m", "workload": w, "front_ends": f, "concurrency": 64, "ok": 10, "errors": 0}
        | {"req_per_s": 100.0 * f, "images_per_s": 640.0, "p50_ms": 1.0, "p99_ms": 2.0}
        | {"of_ceiling": 0.85}
        for w in ("single", "bulk")
        for f in (1, 2)
    ]
    results = {
        "when_utc": "2026-01-01 00:00:00",
        "quick": False,
        "total_seconds": 400.0,
        "steps": {
            "environment": step("passed", {"python": "3.12.3", "gpus": ["H100, 80 GiB"]}),
            "cuda_provider": step(
                "passed",
                {
                    "m": {
                        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                        "cuda_share_of_node_time": 0.99,
                        "batch64_ms": {"cuda": 0.5, "cpu": 20.0},
                    }
                },
            ),
            "ceiling": step("passed", {"device": "cuda", "m": ceiling}),
            "parity": step(
                "passed",
                {"m": {"images": 256, "fraction_within_1_level": 1.0, "max_levels_apart": 1}},
            ),
            "service_gpu": step("passed", {"point_seconds": 1.0, "rows": rows}),
            "service_cpu": step("failed", {"rows": []}, "RuntimeError: 3 failed requests"),
            "training_amp": step("passed", {"device": "cuda", "amp": True}),
        },
    }
    write_outputs(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "could not be drawn" not in report, report
    assert "bulk >= 80% of the GPU ceiling: met (best 85%)" in report
    assert "| 4 | 400 | 600 | 800 |" in report and "| 8 | 1 | 1 | X |" in report
    assert "99.0% of node time on CUDA" in report
    assert "| service_cpu | failed | 1.0 | RuntimeError: 3 failed requests |" in report
    assert json.loads((tmp_path / "results.json").read_text())["plot"] in (
        "plot.png",
        "not drawn: matplotlib is not installed",
    )


def test_the_full_plan_checks_every_shipped_noise_family_in_process() -> None:
    from service.manifest import NOISE_TO_IMAGE, Manifest

    families = Plan.for_host(False, 16).family_models
    names = {Path(d).parent.name for d in families}
    assert {"biggan-mnist", "gan2014", "progan-mnist"} <= names
    assert "mnist-cdcgan" not in names  # served, so it is in ``models``
    assert all(Manifest.load(Path(d)).kind == NOISE_TO_IMAGE for d in families)
    assert Plan.for_host(True, 2).family_models == ()
