"""GanClient / AsyncGanClient against a live service, plus retry rules on a mock transport."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import numpy as np
import pytest

from ganclient import AsyncGanClient, GanClient, GanServeError, GanServeUnavailable
from ganclient.local import LocalGenerator
from service.manifest import TruncationSpec
from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model

from .conftest import NZ, SIZE


@pytest.fixture(scope="module")
def local(tiny_store):
    return LocalGenerator(tiny_store, "tiny")


def test_generate_matches_model_and_service_conventions(service, local):
    with GanClient(service.url, "tiny", chunk_size=64) as client:
        info = client.info()
        assert (info.nz, info.image_size, info.channels, info.num_classes) == (8, 8, 1, 10)
        images = client.generate(12, seed=5)
        assert images.shape == (12, SIZE, SIZE, 1) and images.dtype == np.uint8
        # default labels: seed mod classes, as the service's own endpoints do
        seeds = list(range(5, 17))
        assert np.array_equal(images, local.generate_seeds(seeds, np.array(seeds) % 10))
        sevens = client.generate(3, labels=7, seed=0)
        assert np.array_equal(sevens, local.generate_seeds([0, 1, 2], np.array([7, 7, 7])))
        given = client.generate(3, labels=[2, 0, 2], seed=9)
        assert np.array_equal(given, local.generate_seeds([9, 10, 11], np.array([2, 0, 2])))
        pics = client.generate(2, labels=1, seed=3, pil=True)
        assert [p.size for p in pics] == [(SIZE, SIZE)] * 2 and pics[0].mode == "L"
        assert np.array_equal(np.asarray(pics[0]), local.generate(1, labels=1, seed=3)[0, :, :, 0])
        assert client.ready()


def test_truncation_is_the_services_psi(service, local):
    """psi scales a model's latents here as in the seed routes (a model without a truncation
    spec); a psi the service would refuse is refused before any request."""
    with GanClient(service.url, "tiny") as client:
        half = client.generate(4, labels=3, seed=11, truncation=0.5)
        body = {"seed": 11, "n": 4, "labels": 3, "truncation": 0.5, "format": "npy"}
        served = httpx.post(f"{service.url}/v1/models/tiny/generate", json=body)
        assert np.array_equal(half, np.load(io.BytesIO(served.content)))
        assert np.array_equal(half, local.generate(4, labels=3, seed=11, truncation=0.5))
        assert not np.array_equal(half, client.generate(4, labels=3, seed=11))
        for bad in (1.5, -0.1, float("nan"), "0.5", True):
            with pytest.raises(ValueError, match="truncation must be"):
                client.generate(1, seed=0, truncation=bad)


@pytest.mark.slow
def test_seeds_match_the_service_under_resample_truncation(tmp_path: Path):
    """A model with resample truncation (BigGAN's): the clients draw seed latents by the rule
    the metadata states, so seed s is the same image here, in the seed routes and in-process,
    at the model's own threshold and at an explicit psi."""
    spec = TruncationSpec(kind="resample", threshold=1.0)  # redraws about a third of values
    write_tiny_model(tmp_path, "trunc", nz=NZ, image_size=SIZE, truncation=spec)
    local = LocalGenerator(tmp_path, "trunc")
    with ServiceProcess(tmp_path, "--threads", "1", "--no-warmup") as proc:
        meta = httpx.get(f"{proc.url}/v2/models/trunc").json()["parameters"]
        assert meta["truncation"] == {"kind": "resample", "threshold": 1.0}
        assert "redrawn" in meta["latent"]

        async def run_async(psi: float | None) -> np.ndarray:
            async with AsyncGanClient(proc.url, "trunc") as c:
                return await c.generate(6, labels=[1, 2, 3, 4, 5, 6], seed=40, truncation=psi)

        with GanClient(proc.url, "trunc") as client:
            assert client.info().truncation == spec
            for psi in (None, 0.5):
                extra = {} if psi is None else {"truncation": psi}
                body = {"seed": 40, "n": 6, "labels": [1, 2, 3, 4, 5, 6], "format": "npy", **extra}
                served = httpx.post(f"{proc.url}/v1/models/trunc/generate", json=body)
                expected = np.load(io.BytesIO(served.content))
                mine = client.generate(6, labels=[1, 2, 3, 4, 5, 6], seed=40, truncation=psi)
                assert np.array_equal(mine, expected), psi
                assert np.array_equal(asyncio.run(run_async(psi)), expected), psi
                theirs = local.generate(6, labels=[1, 2, 3, 4, 5, 6], seed=40, truncation=psi)
                assert np.array_equal(theirs, expected), psi


def test_large_n_is_chunked_under_the_request_limit(service, local):
    # the service allows 64 images per request; 150 needs three chunks
    with GanClient(service.url, "tiny", chunk_size=64) as client:
        images = client.generate(150, labels=4, seed=1000)
    assert np.array_equal(images, local.generate(150, labels=4, seed=1000))
    with GanClient(service.url, "tiny", chunk_size=100) as client:
        with pytest.raises(GanServeError) as err:
            client.generate(100, seed=0)
    assert err.value.status_code == 400 and "allowed 1..64" in err.value.message


def test_errors_carry_the_server_message(service):
    with GanClient(service.url, "nope") as client:
        with pytest.raises(GanServeError) as err:
            client.generate(1)
    assert err.value.status_code == 404 and err.value.message == "unknown model 'nope'"
    with GanClient(service.url, "plain") as client:
        assert client.generate(2, seed=1).shape == (2, SIZE, SIZE, 1)
        with pytest.raises(ValueError, match="unconditional"):
            client.generate(2, labels=1)
    with GanClient(service.url, "tiny") as client, pytest.raises(ValueError, match="outside"):
        client.generate(2, labels=10)


def test_async_client_fetches_chunks_concurrently(service, local):
    async def run():
        async with AsyncGanClient(service.url, "tiny", chunk_size=16, max_concurrency=3) as c:
            return await asyncio.gather(c.generate(40, seed=77), c.generate(3, labels=[1, 2, 3]))

    many, few = asyncio.run(run())
    seeds = list(range(77, 117))
    assert np.array_equal(many, local.generate_seeds(seeds, np.array(seeds) % 10))
    assert few.shape == (3, SIZE, SIZE, 1)


def test_timeout_gives_up_after_retries():
    # a socket that accepts connections but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with GanClient(url, "tiny", timeout=0.3, max_retries=1, backoff=0.01) as client:
            started = time.monotonic()
            with pytest.raises(GanServeUnavailable, match="ReadTimeout|timed out"):
                client.info()
    assert len(client.retry_delays) == 1 and time.monotonic() - started < 5


def _overloaded_then_ok(failures: int, retry_after: str | None):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) <= failures:
            headers = {"Retry-After": retry_after} if retry_after else {}
            return httpx.Response(503, json={"error": "queue is full"}, headers=headers)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler), calls


def test_retry_rules_on_mock_transport():
    transport, calls = _overloaded_then_ok(2, "0.05")
    with GanClient("http://x", transport=transport, backoff=5) as client:
        assert client._request("GET", "/v2").json() == {"ok": True}
    assert client.retry_delays == [0.05, 0.05] and len(calls) == 3  # Retry-After, not backoff

    transport, calls = _overloaded_then_ok(3, None)
    with GanClient("http://x", transport=transport, backoff=0.01) as client:
        client._request("GET", "/v2")
    assert len(client.retry_delays) == 3
    assert all(0.005 * 2**k <= d <= 0.01 * 2**k for k, d in enumerate(client.retry_delays))

    date = formatdate(time.time() + 2, usegmt=True)
    transport, _ = _overloaded_then_ok(1, date)
    with GanClient("http://x", transport=transport, max_backoff=0.05) as client:
        client._request("GET", "/v2")
    assert client.retry_delays == [0.05]  # an HTTP date, capped by max_backoff

    transport, calls = _overloaded_then_ok(10, "0")
    with GanClient("http://x", transport=transport, max_retries=2) as client:
        with pytest.raises(GanServeUnavailable) as err:
            client._request("GET", "/v2")
    assert err.value.status_code == 503 and err.value.message == "queue is full"
    assert len(calls) == 3


@pytest.mark.slow
def test_retry_against_a_service_forced_into_overload(tmp_path: Path):
    """A slow model and a queue of one request: concurrent clients get 503s, wait the
    server's Retry-After, and all finish with the right images."""
    write_tiny_model(
        tmp_path, "slow", 1, nz=8, image_size=128, channels=3, num_classes=10, work=100
    )
    args = ["--queue-limit", "16", "--max-batch-size", "16", "--threads", "1", "--no-warmup"]
    with ServiceProcess(tmp_path, *args) as service:

        async def run():
            async with AsyncGanClient(service.url, "slow", max_retries=8, timeout=30) as c:
                got = await asyncio.gather(
                    *(c.generate(16, labels=k, seed=100 * k) for k in range(6))
                )
                return got, list(c.retry_delays)

        results, delays = asyncio.run(run())
        metrics = httpx.get(f"{service.url}/metrics").text
    local = LocalGenerator(tmp_path, "slow")
    for k, images in enumerate(results):
        assert np.array_equal(images, local.generate(16, labels=k, seed=100 * k))
    refused = [
        row
        for row in metrics.splitlines()
        if row.startswith('gan_serve_refusals_total{model="slow",reason="queue_full"}')
    ]
    assert refused and float(refused[0].split()[-1]) >= 1
    assert delays and all(d >= 1.0 for d in delays)  # the server's Retry-After (whole seconds)
