"""The HTTP API in-process (httpx ASGITransport with the app's lifespan running)."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from service.manifest import latents_from_seeds
from tests.service.conftest import Gate, metric_value, run, running_app, wait_for
from tests.support.tiny_model import write_tiny_model

GEN = "/v1/models/tiny/generate"


def npy(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_generate_formats_and_headers(store) -> None:
    async def scenario():
        async with running_app(store) as (_, c):
            r = await c.post(GEN, json={"seed": 42})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"
            assert r.headers["x-seeds"] == "42" and r.headers["x-labels"] == "2"
            single = png(r.content)
            assert single.shape == (8, 8)

            images = npy(await c.post(GEN, json={"seed": 42, "n": 3, "format": "npy"}))
            assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
            np.testing.assert_array_equal(images[0, :, :, 0], single)

            r = await c.post(GEN, json={"seed": 42, "n": 3, "format": "png"})
            assert r.headers["x-seeds"] == "42-44" and r.headers["x-labels"] == "2,3,4"
            pngs = r.json()
            assert len(pngs) == 3
            import base64

            np.testing.assert_array_equal(png(base64.b64decode(pngs[2]))[:, :, None], images[2])

            doc = (await c.post(GEN, json={"seed": 42, "n": 2, "format": "json"})).json()
            assert [i["seed"] for i in doc["images"]] == [42, 43]
            assert [i["label"] for i in doc["images"]] == [2, 3]
            assert doc["version"] == 1

            r = await c.post(GEN, json={"seed": 42, "n": 4, "format": "grid", "columns": 2})
            assert png(r.content).shape == (2 * 10 + 2, 2 * 10 + 2)

            # explicit latents equal to the seed's latents give the seed's image
            z = latents_from_seeds([42], 8).tolist()
            same = npy(await c.post(GEN, json={"latents": z, "labels": 2, "format": "npy"}))
            np.testing.assert_array_equal(same[0], images[0])
            assert "x-seeds" not in (await c.post(GEN, json={"latents": z})).headers

            # labels and truncation change the image; class names work as labels
            other = npy(await c.post(GEN, json={"seed": 42, "labels": "5", "format": "npy"}))
            assert not np.array_equal(other[0], images[0])
            trunc = npy(await c.post(GEN, json={"seed": 42, "truncation": 0.3, "format": "npy"}))
            assert not np.array_equal(trunc[0], images[0])

            # no body at all: one random image
            r = await c.post(GEN)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"

            # headers stay small enough for proxies, whatever n is
            r = await c.post(GEN, json={"n": 256, "format": "npy"})
            first, last = map(int, r.headers["x-seeds"].split("-"))
            assert last - first == 255
            assert sum(len(k) + len(v) for k, v in r.headers.items()) < 4096
            many = list(range(10**17, 10**17 + 512, 2))
            r = await c.post(GEN, json={"seeds": many, "format": "npy"})
            assert r.status_code == 200 and "x-seeds" not in r.headers

            # random seeds are reported so the image can be reproduced
            r = await c.post(GEN, json={"format": "npy"})
            seed = int(r.headers["x-seeds"])
            again = npy(await c.post(GEN, json={"seed": seed, "format": "npy"}))
            np.testing.assert_array_equal(npy(r), again)

    run(scenario())


def test_get_generate_is_cacheable(store) -> None:
    async def scenario():
        async with running_app(store) as (app, c):
            url = f"{GEN}?seed=7&label=3"
            a, b = await c.get(url), await c.get(url)
            assert a.status_code == 200 and a.headers["content-type"] == "image/png"
            assert a.content == b.content and a.headers["etag"] == b.headers["etag"]
            assert (await c.get(f"{GEN}?seed=7&label=4")).headers["etag"] != a.headers["etag"]
            before = metric_value(
                (await c.get("/metrics")).text, "gan_serve_images_generated_total"
            )
            r = await c.get(url, headers={"If-None-Match": a.headers["etag"]})
            assert r.status_code == 304 and r.content == b""
            after = metric_value((await c.get("/metrics")).text, "gan_serve_images_generated_total")
            assert after == before  # a 304 computes nothing
            grid = await c.get(f"{GEN}?seed=7&n=4")
            assert png(grid.content).shape == (22, 22)
            assert (await c.get(f"{GEN}?seed=7&label=12")).json()["error"]["field"] == "label"

    run(scenario())


def test_interpolate(store) -> None:
    async def scenario():
        async with running_app(store) as (_, c):
            url = "/v1/models/tiny/interpolate"
            body = {"seeds": [1, 2], "steps": 5, "format": "npy", "label": 4}
            frames = npy(await c.post(url, json=body))
            assert frames.shape == (5, 8, 8, 1)
            ends = npy(await c.post(GEN, json={"seeds": [1, 2], "labels": 4, "format": "npy"}))
            np.testing.assert_array_equal(frames[0], ends[0])
            np.testing.assert_array_equal(frames[-1], ends[1])
            lerp = npy(await c.post(url, json={**body, "method": "lerp"}))
            assert not np.array_equal(lerp[2], frames[2])
            r = await c.post(url, json={"seeds": [1, 2], "steps": 3})
            assert r.headers["content-type"] == "image/png"
            assert png(r.content).shape == (12, 32)
            r = await c.post(url, json={"seeds": [1, 2], "steps": 3, "format": "frames"})
            assert len(r.json()["frames"]) == 3
            z = latents_from_seeds([1, 2], 8).tolist()
            via_latents = npy(
                await c.post(url, json={"latents": z, "steps": 5, "label": 4, "format": "npy"})
            )
            np.testing.assert_array_equal(via_latents, frames)

    run(scenario())


def test_model_listing(store) -> None:
    async def scenario():
        async with running_app(store) as (_, c):
            models = (await c.get("/v1/models")).json()["models"]
            assert [m["name"] for m in models] == ["tiny"]
            info = (await c.get("/v1/models/tiny")).json()
            assert info["version"] == 1 and info["versions"] == [1]
            assert info["provider"] in ("cpu", "cuda") and info["num_classes"] == 10
            assert info["manifest"]["artifact"]["sha256"]
            assert info["evaluation"] == {"note": "random weights"}
            v = (await c.get("/v1/models/tiny/versions/1")).json()
            assert v["serving"] is True and v["manifest"]["version"] == 1
            assert (await c.get("/v1/models/tiny/versions/9")).status_code == 404
            metrics = (await c.get("/metrics")).text
            assert (
                metric_value(
                    metrics,
                    "gan_serve_model_info",
                    model="tiny",
                    version="1",
                    provider=info["provider"],
                )
                == 1
            )
            assert "generate" in json.dumps((await c.get("/openapi.json")).json()["paths"])

    run(scenario())


BAD_INPUTS = [
    # (body, status, field)
    (b'{"seed": 1,', 400, "body"),
    (b'{"latents": [[0.1, 0.2]]}', 422, "latents[0]"),
    (b'{"latents": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', 422, "latents[0][0]"),
    (b'{"latents": [[Infinity, 0, 0, 0, 0, 0, 0, 0]]}', 422, "latents[0][0]"),
    (b'{"latents": [[1e999, 0, 0, 0, 0, 0, 0, 0]]}', 422, "latents[0][0]"),
    (b'{"n": 0}', 422, "n"),
    (b'{"n": 100000}', 422, "n"),
    (b'{"n": "many"}', 422, "n"),
    (b'{"labels": 10}', 422, "labels"),
    (b'{"labels": "cat"}', 422, "labels"),
    (b'{"n": 2, "labels": [1, 2, 3]}', 422, "labels"),
    (b'{"seed": -1}', 422, "seed"),
    (b'{"seeds": [1, -5]}', 422, "seeds[1]"),
    (b'{"seed": 1, "seeds": [2]}', 422, "seeds"),
    (b'{"n": 3, "seeds": [1, 2]}', 422, "n"),
    (b'{"truncation": 3}', 422, "truncation"),
    (b'{"format": "gif"}', 422, "format"),
    (b'{"colour": "red"}', 422, "colour"),
    (b"[1, 2]", 422, "body"),
    (b"[" * 2000 + b"]" * 2000, 400, "body"),
    (b'{"seed": true}', 422, "seed"),
    (b'{"n": 1.5}', 422, "n"),
]


def test_bad_inputs_get_4xx_naming_the_field_while_others_are_served(store) -> None:
    async def scenario():
        async with running_app(store, max_body_bytes=4096) as (_, c):
            good_before = npy(await c.post(GEN, json={"seed": 9, "format": "npy"}))

            async def good():
                return npy(await c.post(GEN, json={"seed": 9, "format": "npy"}))

            async def bad(body):
                return await c.post(GEN, content=body, headers={"content-type": "application/json"})

            results = await asyncio.gather(
                *[bad(b) for b, _, _ in BAD_INPUTS], *[good() for _ in range(10)]
            )
            for (body, status, field), r in zip(BAD_INPUTS, results, strict=False):
                assert r.status_code == status, (body, r.text)
                err = r.json()["error"]
                assert err["field"] == field, (body, err)
                assert err["code"] and err["message"]
            for images in results[len(BAD_INPUTS) :]:
                np.testing.assert_array_equal(images, good_before)

            r = await c.post("/v1/models/nope/generate", json={})
            assert r.status_code == 404 and r.json()["error"]["field"] == "name"
            r = await c.post(GEN, content=b"x" * 5000, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["field"] == "body"

            async def chunks():
                for _ in range(10):
                    yield b"x" * 1000

            r = await c.post(GEN, content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["field"] == "body"
            metrics = (await c.get("/metrics")).text
            assert metric_value(metrics, "gan_serve_refusals_total", reason="bad_request") >= len(
                BAD_INPUTS
            )
            assert metric_value(metrics, "gan_serve_requests_total", status="500") == 0

    run(scenario())


def test_unconditional_model(tmp_path) -> None:
    write_tiny_model(tmp_path, "plain", 1, num_classes=0, channels=3)

    async def scenario():
        async with running_app(tmp_path) as (_, c):
            r = await c.post("/v1/models/plain/generate", json={"seed": 1, "n": 2, "format": "npy"})
            assert npy(r).shape == (2, 8, 8, 3) and "x-labels" not in r.headers
            r = await c.post("/v1/models/plain/generate", json={"labels": 1})
            assert r.status_code == 422 and r.json()["error"]["field"] == "labels"
            r = await c.get("/v1/models/plain/generate?seed=3")
            assert png(r.content).shape == (8, 8, 3)

    run(scenario())


def test_same_seed_same_image_alone_and_at_any_batch_position(store) -> None:
    async def scenario():
        async with running_app(store, max_batch_size=64) as (app, c):
            seeds = list(range(500, 564))
            alone = [npy(await c.post(GEN, json={"seed": s, "format": "npy"}))[0] for s in seeds]
            # one request of 64: every seed at its own position in a single batch of 64
            together = npy(await c.post(GEN, json={"seeds": seeds, "format": "npy"}))
            for s, img in enumerate(alone):
                np.testing.assert_array_equal(together[s], img)
            # 64 concurrent requests, queued behind a held batch: they form one large batch
            gate = Gate(app)
            blocker = asyncio.ensure_future(c.post(GEN, json={"seed": 1}))
            await gate.wait_started()
            order = seeds[::-1]
            tasks = [
                asyncio.ensure_future(c.post(GEN, json={"seed": s, "format": "npy"})) for s in order
            ]
            batcher = app.state.registry.get("tiny").batcher
            await wait_for(lambda: batcher.queued_images == 64)
            gate.open()
            results = await asyncio.gather(*tasks)
            await blocker
            assert gate.batch_sizes == [1, 64]
            for s, r in zip(order, results, strict=True):
                assert r.headers["x-seeds"] == str(s)
                np.testing.assert_array_equal(npy(r)[0], alone[s - 500])
            metrics = (await c.get("/metrics")).text
            assert metric_value(metrics, "gan_serve_batch_size_images_bucket", le="32.0") < (
                metric_value(metrics, "gan_serve_batch_size_images_count")
            )

    run(scenario())


@pytest.mark.parametrize("fast_path", [True, False])
def test_overload_gets_503_while_accepted_requests_complete(store, monkeypatch, fast_path) -> None:
    import service.pipeline as generate_module

    latents_made: list[int] = []
    real_seed_latents = generate_module.seed_latents

    def counting_seed_latents(seeds, manifest, psi=None):  # noqa: ANN001, ANN202
        latents_made.append(len(seeds))
        return real_seed_latents(seeds, manifest, psi)

    monkeypatch.setattr(generate_module, "seed_latents", counting_seed_latents)

    async def scenario():
        async with running_app(store, queue_limit=20, max_batch_size=8, fast_path=fast_path) as (
            app,
            c,
        ):
            gate = Gate(app)
            accepted = [
                asyncio.ensure_future(c.post(GEN, json={"seed": 1, "n": 4, "format": "npy"}))
            ]
            await gate.wait_started()
            accepted += [
                asyncio.ensure_future(c.post(GEN, json={"seed": i, "n": 4, "format": "npy"}))
                for i in range(5)
            ]
            batcher = app.state.registry.get("tiny").batcher
            await wait_for(lambda: batcher.queued_images == 20)
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_queue_depth_images", model="tiny") == 20
            assert metric_value(text, "gan_serve_requests_in_flight") == 6
            latents_made.clear()
            refused = await asyncio.gather(*[c.post(GEN, json={"seed": 1}) for _ in range(5)])
            refused += [await c.get(f"{GEN}?seed=3"), await c.get(f"{GEN}?seed=4&n=2")]
            assert latents_made == []  # refused before any latent was made
            for r in refused:
                assert r.status_code == 503
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "queue_full"
            gate.open()
            for r in await asyncio.gather(*accepted):
                assert npy(r).shape == (4, 8, 8, 1)
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_refusals_total", reason="queue_full") == 7
            assert metric_value(text, "gan_serve_queue_depth_images", model="tiny") == 0
            assert metric_value(text, "gan_serve_requests_total", status="503") == 7

    run(scenario())


def test_deadline_while_queued_gives_504_and_no_work(store) -> None:
    async def scenario():
        async with running_app(store) as (app, c):
            gate = Gate(app)
            blocker = asyncio.ensure_future(c.post(GEN, json={"seed": 1}))
            await gate.wait_started()
            r = await c.post(GEN, json={"seed": 2, "n": 5, "timeout_ms": 50})
            assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
            gate.open()
            assert (await blocker).status_code == 200
            assert gate.batch_sizes == [1]
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_refusals_total", reason="deadline") == 1
            assert metric_value(text, "gan_serve_images_generated_total") == 1

    run(scenario())


def test_client_disconnect_drops_queued_work(store) -> None:
    async def scenario():
        async with running_app(store) as (app, c):
            gate = Gate(app)
            blocker = asyncio.ensure_future(c.post(GEN, json={"seed": 1}))
            await gate.wait_started()
            gone = asyncio.Event()
            body = json.dumps({"seed": 3, "n": 6}).encode()
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            sent: list[dict] = []

            async def receive():
                if messages:
                    return messages.pop(0)
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": GEN,
                "raw_path": GEN.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
                "client": ("127.0.0.1", 1),
                "server": ("test", 80),
                "state": {},
            }
            call = asyncio.ensure_future(app(scope, receive, send))
            batcher = app.state.registry.get("tiny").batcher
            await wait_for(lambda: batcher.queued_images == 6)
            gone.set()
            await wait_for(lambda: batcher.queued_images == 0)
            gate.open()
            await call
            await blocker
            assert gate.batch_sizes == [1]  # the gone client's 6 images never ran
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_refusals_total", reason="client_gone") == 1

    run(scenario())


def test_readiness_follows_loading_and_draining(store, tmp_path) -> None:
    async def scenario():
        async with running_app(store) as (app, c):
            assert (await c.get("/healthz")).json() == {"status": "alive"}
            assert (await c.get("/readyz")).json()["models"] == {"tiny": 1}
            app.state.context.lifecycle.begin_drain()
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "draining"
            r = await c.post(GEN, json={"seed": 1})
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
            assert (await c.get("/healthz")).status_code == 200
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_refusals_total", reason="draining") == 1

    run(scenario())

    empty = tmp_path / "empty"
    empty.mkdir()

    async def no_models():
        from service.app import create_app
        from service.settings import Settings

        app = create_app(Settings(model_store=empty))
        async with app.router.lifespan_context(app):
            import httpx

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await app.state.loading
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.json()["status"] == "no_models"

    run(no_models())


def test_not_ready_until_warm_up_finishes(store, monkeypatch) -> None:
    import threading

    import httpx

    from service.app import create_app
    from service.runtime import GeneratorRuntime
    from service.settings import Settings

    release = threading.Event()
    warmed: list[list[int]] = []
    original = GeneratorRuntime.warmup

    def slow_warmup(self):
        release.wait(10)
        warmed.append(list(self.batch_sizes))
        original(self)

    monkeypatch.setattr(GeneratorRuntime, "warmup", slow_warmup)

    async def scenario():
        app = create_app(Settings(model_store=store, max_batch_size=6))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                assert (await c.get("/healthz")).status_code == 200
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.json()["status"] == "loading"
                r = await c.post(GEN, json={"seed": 1})
                assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
                assert r.headers["retry-after"] == "1"
                release.set()
                await app.state.loading
                assert (await c.get("/readyz")).status_code == 200
                assert warmed == [[1, 2, 3, 4, 5, 6]]  # every batch size the batcher uses

    run(scenario())
