"""The service as several processes (``--workers 2``): two HTTP front ends sharing the port, one
inference engine, a supervising parent. Real processes on loopback, tiny models."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.__main__ import ENV_ONLY, parse_settings, settings_parser
from service.settings import Settings, usable_cores
from tests.service.conftest import metric_value
from tests.support.server import REPO_ROOT, ServiceProcess
from tests.support.tiny_model import write_tiny_model

GEN = "/v1/models/tiny/generate"
TWO = ("--workers", "2", "--threads", "1", "--inference", "engine")
# Both ways batches can run with two front ends: in the engine, or in each front end.
MODES = pytest.mark.parametrize(
    "two",
    [TWO, ("--workers", "2", "--threads", "1", "--inference", "local")],
    ids=["engine", "local"],
)

pytestmark = pytest.mark.slow


def fresh_get(url: str, path: str, **kwargs) -> httpx.Response:
    """One request on a new connection, so the kernel may hand it to either front end."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.get(path, **kwargs)


def fresh_post(url: str, path: str, **kwargs) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(path, **kwargs)


def child_pid(svc: ServiceProcess, role: str) -> int:
    """The pid the supervisor last logged for ``role`` (``engine`` or ``front end 0``)."""
    found = re.findall(rf"{role} started \(pid (\d+)\)", svc.log_text())
    assert found, svc.log_text()
    return int(found[-1])


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def serving(svc: ServiceProcess, front_ends: int = 2) -> None:
    """Wait until every front end takes connections (each does once its models are ready)."""
    wait_for(lambda: svc.log_text().count("Application startup complete") >= front_ends, 60)


def queued(svc: ServiceProcess) -> float:
    """Images queued in the engine, as any front end's /metrics shows them."""
    return metric_value(fresh_get(svc.url, "/metrics").text, "gan_serve_queue_depth_images")


def refusals(svc: ServiceProcess, reason: str) -> float:
    text = fresh_get(svc.url, "/metrics").text
    return metric_value(text, "gan_serve_refusals_total", reason=reason)


@MODES
def test_front_ends_share_one_port_and_one_set_of_metrics(tmp_path, two) -> None:
    write_tiny_model(tmp_path, "tiny", 1, image_size=32)
    with ServiceProcess(tmp_path, *two) as svc:
        serving(svc)
        seeds = list(range(60))
        with ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(
                    lambda s: fresh_post(svc.url, GEN, json={"seed": s, "format": "npy"}), seeds
                )
            )
        direct = fresh_post(svc.url, GEN, json={"seeds": seeds, "format": "npy"})
        expected = np.load(io.BytesIO(direct.content))
        for seed, r in zip(seeds, answers, strict=True):
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(np.load(io.BytesIO(r.content))[0], expected[seed])
        # Whichever front end answers /metrics shows every process: both front ends' requests
        # and the engine's images.
        for _ in range(4):
            text = fresh_get(svc.url, "/metrics").text
            assert metric_value(text, "gan_serve_requests_total", status="200") >= 61
            assert metric_value(text, "gan_serve_images_generated_total", model="tiny") == 120
            assert metric_value(text, "gan_serve_model_info", model="tiny", version="1") == 1
        served = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", svc.log_text())}
        assert len(served) == 2


def test_queue_limit_deadline_and_client_disconnect_reach_the_engine(tmp_path) -> None:
    write_tiny_model(tmp_path, "tiny", 1, image_size=32, work=20000)
    args = (*TWO, "--queue-limit", "64", "--max-batch-size", "4")
    big = {"n": 64, "format": "npy"}  # 16 batches of 4: about 0.6 s of the engine's time
    with ServiceProcess(tmp_path, *args) as svc:
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(fresh_post, svc.url, GEN, json=big)
            wait_for(lambda: queued(svc) >= 40)
            full = fresh_post(svc.url, GEN, json=big)
            assert full.status_code == 503, full.text
            assert full.json()["error"]["code"] == "queue_full"
            assert int(full.headers["retry-after"]) >= 1
            assert busy.result().status_code == 200
        # A deadline shorter than the queue ahead: 504, its images never computed.
        blocker = threading.Thread(target=fresh_post, args=(svc.url, GEN), kwargs={"json": big})
        blocker.start()
        wait_for(lambda: queued(svc) >= 40)
        late = fresh_post(svc.url, GEN, json={"n": 1, "seed": 5, "timeout_ms": 5})
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        blocker.join(30)
        # A client that leaves while queued: the engine drops its images.
        before = metric_value(
            fresh_get(svc.url, "/metrics").text, "gan_serve_images_generated_total"
        )
        blocker = threading.Thread(
            target=fresh_post, args=(svc.url, GEN), kwargs={"json": {"n": 48}}
        )
        blocker.start()
        wait_for(lambda: queued(svc) >= 20)
        body = b'{"n": 6, "seed": 9}'
        with socket.create_connection(("127.0.0.1", svc.port)) as raw:
            raw.sendall(
                b"POST " + GEN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            wait_for(lambda: queued(svc) % 4 == 2)  # its 6 images joined the queue
        blocker.join(30)
        wait_for(lambda: refusals(svc, "client_gone") == 1)
        text = fresh_get(svc.url, "/metrics").text
        assert metric_value(text, "gan_serve_refusals_total", reason="client_gone") == 1
        assert metric_value(text, "gan_serve_refusals_total", reason="deadline") == 1
        assert metric_value(text, "gan_serve_refusals_total", reason="queue_full") >= 1
        assert metric_value(text, "gan_serve_images_generated_total") == before + 48


@MODES
def test_reload_and_pinned_versions_reach_every_front_end(tmp_path, two) -> None:
    write_tiny_model(tmp_path, "tiny", 1)
    with ServiceProcess(tmp_path, *two) as svc:
        serving(svc)
        body = {"seed": 4, "n": 2, "format": "npy"}
        v1 = fresh_post(svc.url, GEN, json=body).content
        write_tiny_model(tmp_path, "tiny", 2)
        r = fresh_post(svc.url, "/v1/models/tiny/reload")
        assert r.status_code == 200 and r.json()["previous_version"] == 1, r.text
        for _ in range(12):  # new connections land on both front ends
            r = fresh_post(svc.url, GEN, json=body)
            assert r.headers["x-model-version"] == "2"
            assert fresh_get(svc.url, "/readyz").json()["models"] == {"tiny": 2}
        for _ in range(6):
            r = fresh_post(svc.url, "/v1/models/tiny/versions/1/generate", json=body)
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            assert r.content == v1
        r = fresh_post(svc.url, "/v1/models/tiny/reload", json={"version": 9})
        assert r.status_code == 404


def test_a_crashed_engine_fails_its_requests_with_503_and_comes_back(tmp_path) -> None:
    write_tiny_model(tmp_path, "tiny", 1, image_size=32, work=20000)
    with ServiceProcess(tmp_path, *TWO, "--max-batch-size", "4") as svc:
        with ThreadPoolExecutor(3) as pool:
            calls = [
                pool.submit(fresh_post, svc.url, GEN, json={"n": 64, "seed": i}) for i in range(3)
            ]
            # Killed while all three wait on it (48 batches of 4: far from done).
            wait_for(
                lambda: (
                    metric_value(
                        fresh_get(svc.url, "/metrics").text, "gan_serve_requests_in_flight"
                    )
                    >= 3
                )
            )
            os.kill(child_pid(svc, "engine"), signal.SIGKILL)
            answers = [f.result(timeout=10) for f in calls]
        assert [r.status_code for r in answers] == [503] * 3
        assert all("retry-after" in r.headers for r in answers)
        wait_for(lambda: fresh_get(svc.url, "/readyz").status_code == 200)
        assert fresh_post(svc.url, GEN, json={"n": 2}).status_code == 200
        # A crashed front end is started again; the other keeps serving meanwhile.
        os.kill(child_pid(svc, "front end 0"), signal.SIGKILL)
        for _ in range(4):
            assert fresh_get(svc.url, "/readyz").status_code == 200
        wait_for(lambda: len(re.findall(r"front end 0 started", svc.log_text())) == 2)
        assert "engine (pid" in svc.log_text() and "starting it again" in svc.log_text()


@MODES
def test_sigterm_drains_every_front_end_without_a_failed_request(tmp_path, two) -> None:
    write_tiny_model(tmp_path, "tiny", 1, image_size=32, work=20000)
    svc = ServiceProcess(tmp_path, *two, "--max-batch-size", "16", "--drain-grace-s", "1")
    with svc:
        serving(svc)
        with ThreadPoolExecutor(8) as pool:
            calls = [
                pool.submit(fresh_post, svc.url, GEN, json={"n": 32, "seed": i, "format": "npy"})
                for i in range(8)
            ]
            wait_for(
                lambda: (
                    metric_value(
                        fresh_get(svc.url, "/metrics").text, "gan_serve_requests_in_flight"
                    )
                    >= 8
                )  # summed over both front ends
            )
            svc.signal(signal.SIGTERM)
            answers = [f.result(timeout=30) for f in calls]
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert svc.wait(30) == 0, svc.log_text()
    assert svc.log_text().count("draining") == 2


def test_a_busy_port_says_so_in_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service", "--port", str(port), "--model-store", str(tmp_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--port" in lines[0] and str(port) in lines[0], done.stderr


def test_every_setting_has_a_flag_with_its_default() -> None:
    parser = settings_parser()
    flags = {a.dest: a for a in parser._actions}
    assert ENV_ONLY == {"admin_token"}  # a secret: never on a command line
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            assert name not in flags
            continue
        assert name in flags, f"setting {name} has no flag"
        default = field.get_default(call_default_factory=True)
        assert f"(default: {'(none)' if default is None else default})" in flags[name].help
    s = parse_settings(
        [
            "--workers",
            "3",
            "--no-fast-path",
            "--allowed-hosts",
            "a",
            "--allowed-hosts",
            "b",
            "--log-level",
            "debug",
        ]
    )
    assert (s.workers, s.fast_path, s.allowed_hosts, s.log_level) == (3, False, ["a", "b"], "debug")
    for refused in (["--port", "70000"], ["--admin-token", "secret"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_settings(refused)
        assert exit_info.value.code == 2


def test_front_ends_default_to_the_cores_a_container_may_use(tmp_path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cores = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == cores
    cpu_max.write_text("50000 100000\n")  # half a core: still one front end
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{(cores + 3) * 100000} 100000\n")  # a quota above the affinity
    assert usable_cores(cpu_max) == cores
    assert usable_cores(tmp_path / "absent") == cores
    assert Settings(workers=3).front_ends() == 3


def test_front_ends_running_their_own_sessions_share_the_cores(tmp_path, monkeypatch) -> None:
    """Each front end's onnxruntime session gets cores / front ends threads, not all cores
    (two front ends x all cores oversubscribed a 2-core host and halved every batch)."""
    import service.engine_link as engine_link
    from service.engine_link import RemoteRegistry
    from service.metrics import ServiceMetrics
    from service.registry import ModelRegistry

    monkeypatch.setattr(engine_link, "usable_cores", lambda: 8)

    def threads(**settings) -> int:
        registry = RemoteRegistry(tmp_path, Settings(**settings), ServiceMetrics(), "unused")
        return registry.session_threads()

    assert threads(workers=2) == 4
    assert threads(workers=3) == 2
    assert threads(workers=16) == 1
    assert threads(workers=2, threads=3) == 3
    assert ModelRegistry(tmp_path, Settings(workers=2), ServiceMetrics()).session_threads() == 0
