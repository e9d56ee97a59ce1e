"""The Locust file drives a real service headless, every user class, with no failures."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_locust_headless_mixed_and_kserve_users(tmp_path: Path) -> None:
    locust = shutil.which("locust")
    assert locust, "locust is in the dev extra"
    store = tmp_path / "store"
    write_tiny_model(store, name="tiny", num_classes=10)
    with ServiceProcess(store) as service:
        done = subprocess.run(
            [
                locust, "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
                "-H", service.url, "-u", "4", "-r", "4", "-t", "3s",
                "--csv", str(tmp_path / "locust"), "--only-summary",
                "MixedUser", "KServeUser",
            ],
            env={**os.environ, "GAN_MODEL": "tiny", "GAN_BULK_N": "8"},
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "locust_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    for name in ("GET generate n=1 png", "POST generate n=8 npy", "POST /v2 infer"):
        assert int(rows[name]["Request Count"]) > 0, rows.keys()
        assert int(rows[name]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0


@pytest.mark.slow
def test_locust_exits_non_zero_when_requests_fail(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_tiny_model(store, name="tiny", num_classes=10)
    with ServiceProcess(store) as service:
        done = subprocess.run(
            [
                "locust", "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
                "-H", service.url, "-u", "2", "-r", "2", "-t", "2s", "--only-summary",
                "SingleImageUser",
            ],
            env={**os.environ, "GAN_MODEL": "no-such-model"},
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
