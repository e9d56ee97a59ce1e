"""nginx in front of several replicas: the config template renders and passes ``nginx -t``, and
with two real service processes behind a real nginx, load is spread over both, a replica killed
with SIGKILL under load costs the clients nothing, and once restarted it takes load again."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.nginx_process import NginxProcess, load_renderer, nginx_test, write_config
from tests.deploy.tools import DEPLOY
from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model

render = load_renderer()


def test_render_fills_every_placeholder_and_nothing_else(tmp_path):
    values = render.local_values(["127.0.0.1:9001", "127.0.0.1:9002"], "127.0.0.1:9000", tmp_path)
    text = render.render(values)
    assert "{{" not in text
    assert "server 127.0.0.1:9001 max_fails=1" in text and "server 127.0.0.1:9002" in text
    assert "$proxy_add_x_forwarded_for" in text, "nginx variables must survive rendering"
    with pytest.raises(KeyError, match="missing"):
        render.render({k: v for k, v in values.items() if k != "listen"})
    with pytest.raises(KeyError, match="unknown"):
        render.render({**values, "typo": "x"})
    with pytest.raises(ValueError):
        render.upstream_lines([])


def test_committed_compose_config_is_the_rendered_template():
    committed = (DEPLOY / "nginx" / "nginx.compose.conf").read_text()
    assert committed == render.render(render.compose_values()), (
        "regenerate: python deploy/nginx/render.py --compose > deploy/nginx/nginx.compose.conf"
    )


def test_nginx_accepts_the_rendered_config(tmp_path):
    conf = write_config(tmp_path, ["127.0.0.1:9001", "127.0.0.1:9002"], "127.0.0.1:9000")
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_rejects_a_broken_config(tmp_path):
    conf = write_config(tmp_path, ["127.0.0.1:not-a-port"], "127.0.0.1:9000")
    result = nginx_test(tmp_path, conf)
    assert result.returncode != 0
    assert "invalid port" in result.stderr or "invalid" in result.stderr


def generated_by(replica: ServiceProcess) -> int:
    """Successful GET generate requests this replica answered, from its own /metrics."""
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "gan_serve_requests_total"
                and "generate" in labels.get("route", "")
                and labels.get("method") == "GET"
                and labels.get("status") == "200"
            ):
                total += sample.value
    return int(total)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SeedLoad:
    """Client threads asking nginx for images by seed (idempotent GETs) until stopped; keeps
    every failure and the body hash per seed (the same seed must give the same bytes)."""

    def __init__(self, url: str, threads: int = 6, seeds: int = 50) -> None:
        self.url = url
        self.seeds = seeds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.hashes: dict[int, set[str]] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            i = index
            while not self.stop_event.is_set():
                seed = i % self.seeds
                i += len(self.threads)
                try:
                    r = client.get("/v1/models/tiny/generate", params={"seed": seed, "label": 3})
                except httpx.HTTPError as exc:
                    self._record(seed, None, f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self._record(seed, None, f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    self._record(seed, hashlib.sha256(r.content).hexdigest(), None)

    def _record(self, seed: int, digest: str | None, failure: str | None) -> None:
        with self.lock:
            if failure is not None:
                self.failures.append(failure)
            else:
                self.ok += 1
                self.hashes.setdefault(seed, set()).add(digest)

    def __enter__(self) -> SeedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failover_under_load(tmp_path: Path):
    store = tmp_path / "store"
    write_tiny_model(store, work=50)
    with (
        ServiceProcess(store) as a,
        ServiceProcess(store) as b,
        NginxProcess(tmp_path / "nginx", [a.url[len("http://") :], b.url[len("http://") :]]) as lb,
        SeedLoad(lb.url) as load,
    ):
        # Both replicas take a share of the load.
        wait_until(lambda: generated_by(a) >= 20 and generated_by(b) >= 20, 20, "both replicas")

        # SIGKILL one replica mid-load: in-flight and new requests fail over to the other.
        a.signal(signal.SIGKILL)
        a.wait(10)
        at_kill, b_at_kill = load.ok, generated_by(b)
        wait_until(lambda: generated_by(b) >= b_at_kill + 100, 20, "the survivor to serve alone")
        assert load.ok > at_kill

        # Restarted on the same port, it is found again and takes load again.
        a.start()
        wait_until(lambda: generated_by(a) >= 20, 30, "the restarted replica to take load")
        with load.lock:
            before_stop = load.ok

    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    assert before_stop >= 300
    assert len(load.hashes) == load.seeds
    assert all(len(digests) == 1 for digests in load.hashes.values()), "same seed, same image"
    counts = Counter(len(d) for d in load.hashes.values())
    assert counts == {1: load.seeds}
