"""The real service process (``python -m service`` under uvicorn) on loopback."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.__main__ import parse_settings
from service.manifest import latents_from_seeds
from tests.service.conftest import metric_value
from tests.support.server import ServiceProcess, free_port
from tests.support.tiny_model import write_tiny_model

GEN = "/v1/models/tiny/generate"


def reference_images(directory: Path, seeds: list[int]) -> np.ndarray:
    """What the model gives for these seeds (balanced labels), straight from onnxruntime."""
    sess = ort.InferenceSession(
        str(directory / "generator.onnx"), providers=["CPUExecutionProvider"]
    )
    z = latents_from_seeds(seeds, 8)
    return sess.run(None, {"z": z, "label": np.array(seeds, np.int64) % 10})[0]


def test_cli_flags_override_environment(monkeypatch) -> None:
    monkeypatch.setenv("GAN_SERVE_MAX_BATCH_SIZE", "12")
    monkeypatch.setenv("GAN_SERVE_QUEUE_LIMIT", "99")
    s = parse_settings(["--queue-limit", "7", "--device", "cpu", "--no-warmup"])
    assert (s.max_batch_size, s.queue_limit, s.device, s.warmup) == (12, 7, "cpu", False)
    assert (s.host, s.port) == ("127.0.0.1", 8000)


@pytest.mark.slow
def test_concurrent_requests_batch_and_each_gets_its_own_image(tmp_path) -> None:
    directory = write_tiny_model(tmp_path, "tiny", 1, image_size=32, work=2000)
    seeds = list(range(1000, 1256))
    expected = reference_images(directory, seeds)
    with ServiceProcess(tmp_path, "--max-batch-size", "32", "--threads", "1") as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as client:
            # One client per thread: an httpx connection pool shared by 64 threads can close
            # a socket under another thread's read.
            local = threading.local()
            opened: list[httpx.Client] = []

            def one(seed: int) -> tuple[int, httpx.Response]:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(base_url=svc.url, timeout=30)
                    opened.append(local.client)
                return seed, local.client.post(GEN, json={"seed": seed, "format": "npy"})

            try:
                with ThreadPoolExecutor(64) as pool:
                    results = list(pool.map(one, seeds))
            finally:
                for c in opened:
                    c.close()
            for seed, r in results:
                assert r.status_code == 200, r.text
                assert r.headers["x-seeds"] == str(seed)
                image = np.load(io.BytesIO(r.content))[0]
                np.testing.assert_array_equal(image, expected[seed - 1000])
            text = client.get("/metrics").text
        batches = metric_value(text, "gan_serve_batch_size_images_count", model="tiny")
        singles = metric_value(text, "gan_serve_batch_size_images_bucket", model="tiny", le="1.0")
        images = metric_value(text, "gan_serve_batch_size_images_sum", model="tiny")
        assert images == len(seeds)
        assert batches - singles > 0, "no batch larger than 1 formed"
        assert batches < len(seeds)
        assert metric_value(text, "gan_serve_requests_total", status="200") == len(seeds)


@pytest.mark.slow
def test_sigterm_drains_then_exits_zero(tmp_path) -> None:
    write_tiny_model(tmp_path, "tiny", 1, image_size=32, work=2000)
    svc = ServiceProcess(
        tmp_path, "--max-batch-size", "16", "--drain-grace-s", "1.5", "--drain-timeout-s", "20"
    )
    with svc:
        client = httpx.Client(base_url=svc.url, timeout=60)
        results: list[httpx.Response] = []

        def big(seed: int) -> None:
            with httpx.Client(base_url=svc.url, timeout=60) as own:
                results.append(own.post(GEN, json={"seed": seed, "n": 128, "format": "npy"}))

        threads = [threading.Thread(target=big, args=(i * 1000,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = client.get("/metrics").text
            if metric_value(text, "gan_serve_requests_in_flight") >= 6:
                break
            time.sleep(0.01)
        else:
            pytest.fail("requests never got in flight")
        signaled = time.monotonic()
        svc.signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = client.post(GEN, json={"seed": 1})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        for t in threads:
            t.join(30)
        assert len(results) == 6
        for r in results:
            assert r.status_code == 200, r.text
            assert np.load(io.BytesIO(r.content)).shape == (128, 32, 32, 1)
        assert svc.wait(20) == 0, svc.log_text()
        assert time.monotonic() - signaled < 20
        client.close()
    assert "draining" in svc.log_text()


@pytest.mark.slow
def test_prometheus_scrapes_the_service_under_load(tmp_path) -> None:
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    write_tiny_model(tmp_path, "tiny", 1)
    with ServiceProcess(tmp_path) as svc:
        work = Path(tempfile.mkdtemp(prefix="prom-", dir=tmp_path))
        port = free_port()
        (work / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: gan-serve\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{svc.port}']\n"
        )
        log = open(work / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=svc.url, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    c.post(GEN, json={"seed": i, "n": 4})
                    i += 1

        loaders = [threading.Thread(target=load) for _ in range(4)]
        for t in loaders:
            t.start()
        try:
            query = "sum(rate(gan_serve_images_generated_total[5s]))"
            rate = 0.0
            deadline = time.monotonic() + 45
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:
                while time.monotonic() < deadline:
                    try:
                        r = prom.get("/api/v1/query", params={"query": query})
                        result = r.json()["data"]["result"] if r.status_code == 200 else []
                    except httpx.HTTPError:
                        result = []
                    if result and float(result[0]["value"][1]) > 0:
                        rate = float(result[0]["value"][1])
                        break
                    time.sleep(0.5)
                targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert rate > 0, (work / "prometheus.log").read_text()[-2000:]
            assert targets[0]["health"] == "up"
            assert targets[0]["labels"]["job"] == "gan-serve"
        finally:
            stop.set()
            for t in loaders:
                t.join(10)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


def test_model_store_default(tmp_path, monkeypatch) -> None:
    from service.settings import PACKAGE_STORE, Settings

    monkeypatch.delenv("GAN_SERVE_MODEL_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().resolved_model_store() == PACKAGE_STORE
    assert PACKAGE_STORE == Path(__file__).resolve().parents[2] / "model_store"
    (tmp_path / "model_store").mkdir()
    assert Settings().resolved_model_store() == tmp_path / "model_store"
    monkeypatch.setenv("GAN_SERVE_MODEL_STORE", "/srv/models")
    assert Settings().resolved_model_store() == Path("/srv/models")
