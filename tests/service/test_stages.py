"""The pipeline stages on their own: latents, encoders, runtime, batcher."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service import encode, runtime
from service.batcher import BatcherClosed, DeadlineExceeded, LatentBatcher, QueueFull
from service.errors import ServiceError
from service.latents import (
    interpolate,
    labels_for,
    latents_from_request,
    seed_latents,
    seeds_for,
    truncate,
)
from service.manifest import Manifest, TruncationSpec, latent_from_seed, latents_from_seeds
from service.metrics import ServiceMetrics
from service.runtime import GeneratorRuntime, ProviderUnavailable, RuntimeOptions
from tests.service.conftest import metric_value, run
from tests.support.tiny_model import write_tiny_model

# --- latents ------------------------------------------------------------------------------


def _manifest(tmp_path, **kw) -> Manifest:
    return Manifest.load(write_tiny_model(tmp_path, **kw))


def test_seeds_are_consecutive_and_bounded() -> None:
    assert seeds_for(5, 3) == [5, 6, 7]
    assert len(set(seeds_for(None, 4))) == 4
    with pytest.raises(ServiceError) as err:
        seeds_for(2**63 - 2, 5)
    assert err.value.field == "seed"


def test_balanced_labels_follow_seeds_or_positions(tmp_path) -> None:
    m = _manifest(tmp_path)
    assert labels_for(m, None, 12, list(range(20, 32))).tolist() == [i % 10 for i in range(20, 32)]
    assert labels_for(m, None, 3, None).tolist() == [0, 1, 2]
    assert labels_for(m, "7", 2, None).tolist() == [7, 7]
    assert labels_for(m, [4], 3, None).tolist() == [4, 4, 4]
    assert labels_for(m, [1, 2], 2, None).tolist() == [1, 2]
    for bad, field in [
        (10, "labels"),
        ([1, 99], "labels[1]"),
        ([1, 2, 3], "labels"),
        ("x", "labels"),
    ]:
        with pytest.raises(ServiceError) as err:
            labels_for(m, bad, 2, None)
        assert err.value.field == field and err.value.status == 422


def test_unconditional_model_takes_no_labels(tmp_path) -> None:
    m = _manifest(tmp_path, num_classes=0)
    assert labels_for(m, None, 3, [1, 2, 3]) is None
    with pytest.raises(ServiceError):
        labels_for(m, 1, 3, None)


def test_given_latents_checked_for_length_and_finiteness() -> None:
    z = latents_from_request([[0.5] * 4, [1.0] * 4], 4, "latents")
    assert z.dtype == np.float32 and z.shape == (2, 4)
    with pytest.raises(ServiceError) as err:
        latents_from_request([[0.0] * 4, [0.0] * 3], 4, "latents")
    assert err.value.field == "latents[1]"
    with pytest.raises(ServiceError) as err:
        latents_from_request([[0.0] * 3 + [1e39]], 4, "latents")  # overflows float32
    assert err.value.field == "latents[0]"


def test_truncation_scales_toward_the_mean(tmp_path) -> None:
    m = _manifest(tmp_path)
    assert m.truncation is None  # manifests without the field: the scaling rule, as before
    z = latent_from_seed(3, 16)[None]
    assert truncate(z, None, m) is z
    np.testing.assert_allclose(truncate(z, 0.5, m), z * 0.5)
    assert not truncate(z, 0.0, m).any()
    drawn = seed_latents([3], m, 0.5)
    np.testing.assert_array_equal(drawn, latent_from_seed(3, m.nz)[None])  # scaled after


def test_resample_truncation_is_deterministic_and_within_the_threshold(tmp_path) -> None:
    m = _manifest(tmp_path).model_copy(
        update={"truncation": TruncationSpec(kind="resample", threshold=1.0)}
    )
    seeds = list(range(200))
    z = seed_latents(seeds, m)
    plain = latents_from_seeds(seeds, m.nz)
    assert np.abs(plain).max() > 1.0 and np.abs(z).max() <= 1.0  # some values were redrawn
    inside = np.abs(plain) <= 1.0
    np.testing.assert_array_equal(z[inside], plain[inside])  # the rest kept as drawn
    np.testing.assert_array_equal(seed_latents([7, 8], m), z[7:9])  # per seed, not per batch
    half = seed_latents(seeds, m, 0.5)
    assert np.abs(half).max() <= 0.5 and not np.array_equal(half, z)
    assert not seed_latents([1], m, 0.0).any()
    assert truncate(z, None, m) is not z and np.array_equal(truncate(z, None, m), z)
    sent = np.array([[3.0, -0.2, -5.0, 0.9]], dtype=np.float32)  # latents a caller sent: clipped
    np.testing.assert_array_equal(truncate(sent, 0.5, m), np.float32([[0.5, -0.2, -0.5, 0.5]]))
    old = Manifest.model_validate_json(m.model_dump_json(exclude={"truncation"}))
    assert old.truncation is None


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_hits_both_ends(method: str) -> None:
    a, b = latent_from_seed(1, 32), latent_from_seed(2, 32)
    path = interpolate(a, b, 5, method)
    assert path.shape == (5, 32) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)
    if method == "slerp":  # slerp keeps roughly the norm of the ends; lerp shrinks it
        mid = np.linalg.norm(path[2])
        assert mid > 0.95 * min(np.linalg.norm(a), np.linalg.norm(b))


# --- encoders -----------------------------------------------------------------------------


def test_png_round_trips_gray_and_rgb() -> None:
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        img = rng.integers(0, 256, (16, 16, channels), dtype=np.uint8)
        data = encode.png_bytes(img)
        back = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(back.reshape(img.shape), img)
        assert encode.png_bytes(img) == data  # deterministic bytes


def test_grid_places_images_row_major() -> None:
    images = np.stack([np.full((4, 4, 1), i * 20, np.uint8) for i in range(5)])
    g = encode.grid(images, columns=3, padding=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert g[1, 1, 0] == 0 and g[1, 6, 0] == 20 and g[6, 6, 0] == 80


def test_npy_round_trips() -> None:
    images = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    np.testing.assert_array_equal(np.load(io.BytesIO(encode.npy_bytes(images))), images)


# --- runtime ------------------------------------------------------------------------------


def test_batch_sizes() -> None:
    assert runtime.batch_sizes_for(5, "exact") == [1, 2, 3, 4, 5]
    assert runtime.batch_sizes_for(48, "pow2") == [1, 2, 4, 8, 16, 32, 48]
    assert runtime.batch_sizes_for(64, "pow2")[-1] == 64


def test_provider_choice_is_explicit(tmp_path, monkeypatch) -> None:
    directory = write_tiny_model(tmp_path)
    m = Manifest.load(directory)
    monkeypatch.setattr(runtime, "_cuda_failure", None)
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rt = GeneratorRuntime(directory, m, RuntimeOptions(device="auto", max_batch_size=4))
    assert rt.provider == "CPUExecutionProvider" and rt.provider_name == "cpu"
    assert rt.session.get_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "_cuda_failure", None)
    with pytest.raises(ProviderUnavailable):
        GeneratorRuntime(directory, m, RuntimeOptions(device="cuda", max_batch_size=4))


def test_runtime_pads_to_buckets_and_returns_exactly_n(tmp_path) -> None:
    directory = write_tiny_model(tmp_path)
    m = Manifest.load(directory)
    rt = GeneratorRuntime(
        directory, m, RuntimeOptions(device="cpu", max_batch_size=8, buckets="pow2")
    )
    assert rt.warmup_sizes() == [1, 8]  # on the CPU: the smallest and the largest batch
    rt.warmup()
    z = np.stack([latent_from_seed(s, m.nz) for s in range(5)])
    labels = np.arange(5, dtype=np.int64)
    out = rt.run(z, labels)
    assert out.shape == (5, 8, 8, 1) and out.dtype == np.uint8
    for i in range(5):
        np.testing.assert_array_equal(rt.run(z[i : i + 1], labels[i : i + 1])[0], out[i])
    assert len({out[i].tobytes() for i in range(5)}) == 5  # images differ by seed and label


# --- batcher ------------------------------------------------------------------------------


def _echo(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Fake inference: image pixel = the latent's first value, so outputs identify inputs."""
    return np.repeat(z[:, :1, None, None], 2, axis=1).astype(np.uint8)


def _z(values: list[int]) -> np.ndarray:
    return np.array([[v, 0] for v in values], np.float32)


class _SlowEcho:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()

    def __call__(self, z, labels):
        self.sizes.append(len(z))
        self.release.wait(10)
        return _echo(z, labels)


def test_batcher_spans_batches_and_keeps_order() -> None:
    async def scenario():
        sizes: list[int] = []

        def run_batch(z, labels):
            sizes.append(len(z))
            return _echo(z, labels)

        b = LatentBatcher(run_batch, model="m", max_batch_size=4)
        out = await b.submit(_z(list(range(10))))
        assert out[:, 0, 0, 0].tolist() == list(range(10))
        assert sizes == [4, 4, 2]
        await b.close()

    run(scenario())


def test_lone_request_pays_no_delay() -> None:
    async def scenario():
        b = LatentBatcher(_echo, model="m", max_batch_size=64, max_batch_delay_s=30.0, workers=2)
        out = await asyncio.wait_for(b.submit(_z([7])), timeout=5)  # far below the 30 s delay
        assert out[0, 0, 0, 0] == 7
        await b.close()

    run(scenario())


def test_batches_grow_while_one_runs_and_each_gets_its_own() -> None:
    async def scenario():
        slow = _SlowEcho()
        metrics = ServiceMetrics()
        b = LatentBatcher(slow, model="m", max_batch_size=8, metrics=metrics)
        first = asyncio.ensure_future(b.submit(_z([100])))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit(_z([i, i + 50]))) for i in range(6)]
        await asyncio.sleep(0.05)
        assert b.queued_images == 12
        slow.release.set()
        results = await asyncio.gather(first, *rest)
        assert results[0][:, 0, 0, 0].tolist() == [100]
        for i, out in enumerate(results[1:]):
            assert out[:, 0, 0, 0].tolist() == [i, i + 50]
        assert slow.sizes == [1, 8, 4]  # second batch filled up while the first ran
        text = metrics.render().decode()
        assert metric_value(text, "gan_serve_batch_size_images_count", model="m") == 3
        assert metric_value(text, "gan_serve_images_generated_total", model="m") == 13
        await b.close()

    run(scenario())


def test_a_busy_loop_does_not_leave_the_model_idle() -> None:
    """A worker finishing a batch starts the queued next one itself: while the event loop is
    blocked (a flood of refusals, say), every queued batch still runs."""

    async def scenario():
        ran: list[float] = []

        def run_batch(z, labels):
            ran.append(time.monotonic())
            time.sleep(0.01)
            return _echo(z, labels)

        b = LatentBatcher(run_batch, model="m", max_batch_size=2)
        pending = [asyncio.ensure_future(b.submit(_z([i, i]))) for i in range(6)]
        while not ran:  # the first batch has started
            await asyncio.sleep(0.001)
        blocked_from = time.monotonic()
        time.sleep(0.5)  # the loop is busy elsewhere, runs no callback
        blocked_until = time.monotonic()
        results = await asyncio.gather(*pending)
        assert [out[0, 0, 0, 0] for out in results] == list(range(6))
        assert len(ran) == 6 and all(blocked_from <= t < blocked_until for t in ran[1:])
        await b.close()

    run(scenario())


def test_queue_limit_refuses_at_once() -> None:
    async def scenario():
        slow = _SlowEcho()
        metrics = ServiceMetrics()
        b = LatentBatcher(slow, model="m", max_batch_size=2, queue_limit=4, metrics=metrics)
        running = asyncio.ensure_future(b.submit(_z([1])))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.submit(_z([1, 2, 3])))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as err:
            await b.submit(_z([4, 5]))
        assert err.value.retry_after >= 1
        slow.release.set()
        assert (await queued)[:, 0, 0, 0].tolist() == [1, 2, 3]
        await running
        text = metrics.render().decode()
        assert metric_value(text, "gan_serve_refusals_total", reason="queue_full") == 1
        await b.close()

    run(scenario())


def test_deadline_while_queued_is_never_computed() -> None:
    async def scenario():
        slow = _SlowEcho()
        b = LatentBatcher(slow, model="m", max_batch_size=4)
        running = asyncio.ensure_future(b.submit(_z([1])))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await b.submit(_z([9, 9]), deadline=time.monotonic() + 0.05)
        assert b.queued_images == 0
        slow.release.set()
        await running
        await b.close()
        assert slow.sizes == [1]  # the expired request never reached inference

    run(scenario())


def test_cancelled_request_drops_its_queued_images() -> None:
    async def scenario():
        slow = _SlowEcho()
        metrics = ServiceMetrics()
        b = LatentBatcher(slow, model="m", max_batch_size=4, metrics=metrics)
        running = asyncio.ensure_future(b.submit(_z([1])))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit(_z([5, 6, 7])))
        await asyncio.sleep(0.01)
        assert b.queued_images == 3
        gone.cancel()
        await asyncio.sleep(0.01)
        assert b.queued_images == 0
        slow.release.set()
        await running
        await b.close()
        assert slow.sizes == [1]
        text = metrics.render().decode()
        assert metric_value(text, "gan_serve_refusals_total", reason="client_gone") == 1

    run(scenario())


def test_inference_error_reaches_every_request_in_the_batch() -> None:
    async def scenario():
        def broken(z, labels):
            raise RuntimeError("boom")

        b = LatentBatcher(broken, model="m")
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit(_z([1]))
        out = b.submit(_z([2]))
        with pytest.raises(RuntimeError):
            await out
        await b.close()

    run(scenario())


def test_closed_batcher_finishes_queued_work_then_refuses() -> None:
    async def scenario():
        slow = _SlowEcho()
        b = LatentBatcher(slow, model="m", max_batch_size=2)
        pending = [asyncio.ensure_future(b.submit(_z([i]))) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(b.close(timeout=10))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await b.submit(_z([9]))
        slow.release.set()
        assert await closing is True
        assert [int(p.result()[0, 0, 0, 0]) for p in pending] == [0, 1, 2]

    run(scenario())


def test_inference_runs_off_the_event_loop() -> None:
    async def scenario():
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def record(z, labels):
            seen.append(threading.get_ident())
            return _echo(z, labels)

        b = LatentBatcher(record, model="m")
        await b.submit(_z([1]))
        await b.close()
        assert seen and loop_thread not in seen

    run(scenario())


def test_finish_runs_on_the_worker_once_per_request_after_its_last_batch() -> None:
    async def scenario():
        loop_thread = threading.get_ident()
        calls: list[tuple[int, list[int]]] = []

        def finish(images: np.ndarray) -> bytes:
            calls.append((threading.get_ident(), images[:, 0, 0, 0].tolist()))
            if images[0, 0, 0, 0] == 99:
                raise RuntimeError("encoder failed")
            return bytes(images[:, 0, 0, 0].tolist())

        b = LatentBatcher(_echo, model="m", max_batch_size=4)
        spanning, single = await asyncio.gather(
            b.submit(_z(list(range(10))), finish=finish), b.submit(_z([7]), finish=finish)
        )
        assert spanning == bytes(range(10)) and single == bytes([7])
        assert sorted(c[1] for c in calls) == [list(range(10)), [7]]  # once each, whole request
        assert all(thread != loop_thread for thread, _ in calls)
        with pytest.raises(RuntimeError, match="encoder failed"):  # fails its request only
            await b.submit(_z([99]), finish=finish)
        assert (await b.submit(_z([5])))[:, 0, 0, 0].tolist() == [5]
        await b.close()

    run(scenario())


def test_with_two_workers_a_free_worker_waits_for_a_fuller_batch() -> None:
    async def scenario():
        slow = _SlowEcho()
        b = LatentBatcher(slow, model="m", max_batch_size=3, max_batch_delay_s=1.0, workers=2)
        first = asyncio.ensure_future(b.submit(_z([1])))  # idle: starts at once
        for _ in range(200):
            if slow.sizes:
                break
            await asyncio.sleep(0.01)
        assert slow.sizes == [1]
        second = asyncio.ensure_future(b.submit(_z([2])))
        await asyncio.sleep(0.05)
        assert slow.sizes == [1]  # one batch runs: the free worker waits for more images
        third = asyncio.ensure_future(b.submit(_z([3])))
        await asyncio.sleep(1.2)  # past the delay: goes with what it has
        assert slow.sizes == [1, 2]
        fourth = asyncio.ensure_future(b.submit(_z([4, 5, 6])))  # both workers busy: queued
        await asyncio.sleep(0.05)
        slow.release.set()
        results = await asyncio.gather(first, second, third, fourth)
        assert [r[:, 0, 0, 0].tolist() for r in results] == [[1], [2], [3], [4, 5, 6]]
        assert slow.sizes == [1, 2, 3]
        await b.close()

    run(scenario())


def test_close_timeout_fails_queued_requests_instead_of_leaving_them_waiting() -> None:
    async def scenario():
        slow = _SlowEcho()
        b = LatentBatcher(slow, model="m", max_batch_size=1)
        running = asyncio.ensure_future(b.submit(_z([1])))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.submit(_z([2])))
        await asyncio.sleep(0.01)
        assert await b.close(timeout=0.1) is False
        with pytest.raises(BatcherClosed):
            await queued
        slow.release.set()
        await running

    run(scenario())


def test_seed_ranges_header_text() -> None:
    from service.routers.generate import seed_ranges

    assert seed_ranges([42]) == "42"
    assert seed_ranges([5, 6, 7, 9, 11, 12]) == "5-7,9,11-12"
    assert seed_ranges([3, 2]) == "3,2"
