"""The translate bench end to end on a tiny translator: ceiling, single and bulk loads, ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_translator import write_tiny_translator

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_translate_bench(tmp_path: Path) -> None:
    version_dir = write_tiny_translator(tmp_path / "store", "flip")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench", "--translate", "--quick", "--layouts", "pinned"]
    command += ["--model", str(version_dir), "--out", str(out), "--work", str(tmp_path)]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]

    result = json.loads((out / "translate.json").read_text())["layouts"]["pinned"]["result"]
    assert [b["batch_size"] for b in result["ceiling"]["per_batch"]] == [1, 8, 64]
    assert result["ceiling"]["single_images_per_s"] > 0
    runs = result["runs"]
    assert [(r["workload"], r["concurrency"]) for r in runs] == [
        ("single", 1),
        ("single", 8),
        ("bulk", 1),
    ]
    for row in runs:
        assert row["errors"] == 0 and row["ok"] > 0 and row["p99_ms"] > 0, row
    (bulk,) = [r for r in runs if r["workload"] == "bulk"]
    assert bulk["images_per_s"] == pytest.approx(16 * bulk["req_per_s"])
    assert bulk["avg_batch"] >= 16  # the whole upload ran as one batch
    assert set(result["ratios"]) == {"service/ceiling single", "service/ceiling bulk"}
    assert all(v > 0 for v in result["ratios"].values())
    report = (out / "translate.md").read_text()
    assert "| single | 8 |" in report and "service/ceiling bulk" in report


def test_translate_bench_refuses_a_noise_model(tmp_path: Path) -> None:
    from bench.translate import resolve_translator
    from tests.support.tiny_model import write_tiny_model

    version_dir = write_tiny_model(tmp_path / "store", "tiny", 1, nz=4, image_size=8)
    with pytest.raises(SystemExit, match="needs image-to-image"):
        resolve_translator(str(version_dir), tmp_path / "work")
