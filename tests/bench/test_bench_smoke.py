"""The quick bench end to end: every system started, loaded, stopped, and reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_measures_every_system_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    result = json.loads((out / "results.json").read_text())
    assert list(result["layouts"]) == ["whole", "pinned"]  # the whole machine leads
    whole, pinned = result["layouts"]["whole"], result["layouts"]["pinned"]
    assert whole["server_cpus"].startswith("all") and pinned["server_cpus"] != pinned["client_cpus"]
    scaling = next(iter(whole["scaling"].values()))
    assert [(r["front_ends"], r["inference"]) for r in scaling] == [
        (1, "auto"),
        (2, "engine"),
        (2, "local"),
    ]
    assert all(r["cpu_ms_per_request"]["gan-serve-http"] > 0 for r in scaling[1:])
    assert all(r["errors"] == 0 and r["req_per_s"] > 0 for r in scaling)
    (whole_model,) = whole["models"].values()
    assert {r["system"] for r in whole_model["runs"]} == {"service", "naive", "torchserve"}
    (model,) = pinned["models"].values()
    assert [b["batch_size"] for b in model["ceiling"]["per_batch"]] == [1, 8, 64]
    assert model["ceiling"]["single_images_per_s"] > 0

    runs = model["runs"]
    assert {r["system"] for r in runs} == {"service", "naive", "torchserve"}
    assert {(r["system"], r["workload"]) for r in runs} >= {
        ("service", "single"),
        ("service", "bulk"),
        ("naive", "single"),
        ("naive", "bulk"),
        ("torchserve", "single"),
    }
    assert {r["mode"] for r in runs} == {"closed", "open"}
    for row in runs:
        assert row["errors"] == 0, row
        assert row["ok"] > 0 and row["p99_ms"] > 0, row
    service_rows = [r for r in runs if r["system"] == "service" and r["mode"] == "closed"]
    assert all(r["avg_batch"] >= 1 for r in service_rows)
    bulk = [r for r in service_rows if r["workload"] == "bulk"]
    assert all(r["images_per_s"] == pytest.approx(64 * r["req_per_s"]) for r in bulk)

    ratios = model["analysis"]["ratios"]
    for key in ("service/ceiling single", "service/naive single", "service/TorchServe single"):
        assert ratios[key] is not None and ratios[key] > 0
    report = (out / "results.md").read_text()
    assert report.index("## Ratios") < report.index("## Targets") < report.index("| system |")
    assert report.index("# Whole machine") < report.index("## Scaling") < report.index("# Pinned")
    assert "does not measure the targets" in report and "**no**" not in report
    assert (out / "p99_vs_throughput.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "p99_vs_throughput_pinned.png").read_bytes().startswith(b"\x89PNG")
