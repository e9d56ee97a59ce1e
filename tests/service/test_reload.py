"""Versions, reload, hot swap under load, corrupt artifacts, file watch."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np

from tests.service.conftest import metric_value, run, running_app, wait_for
from tests.support.tiny_model import write_tiny_model

GEN = "/v1/models/tiny/generate"
RELOAD = "/v1/models/tiny/reload"


def images_of(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def corrupt(directory) -> None:
    with open(directory / "generator.onnx", "ab") as fh:
        fh.write(b"tampered")


def test_reload_swaps_versions_and_refuses_bad_ones(store) -> None:
    async def scenario():
        async with running_app(store) as (app, c):
            body = {"seed": 11, "n": 4, "format": "npy"}
            v1 = images_of(await c.post(GEN, json=body))
            write_tiny_model(store, "tiny", 2)
            r = await c.post(RELOAD)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 2 and r.json()["previous_version"] == 1
            r = await c.post(GEN, json=body)
            assert r.headers["x-model-version"] == "2"
            v2 = images_of(r)
            assert not np.array_equal(v1, v2)

            # corrupt artifact: refused with 409, v2 keeps serving
            corrupt(write_tiny_model(store, "tiny", 3))
            r = await c.post(RELOAD)
            assert r.status_code == 409
            err = r.json()["error"]
            assert err["code"] == "artifact_mismatch" and "sha256" in err["message"]
            r = await c.post(GEN, json=body)
            assert r.headers["x-model-version"] == "2"
            np.testing.assert_array_equal(images_of(r), v2)

            # invalid manifest: refused too
            bad = write_tiny_model(store, "tiny", 4)
            doc = json.loads((bad / "manifest.json").read_text())
            doc["nz"] = "eight"
            (bad / "manifest.json").write_text(json.dumps(doc))
            r = await c.post(RELOAD)
            assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_manifest"
            assert (await c.get("/v1/models/tiny")).json()["version"] == 2

            # an explicit older version; unknown versions and models
            r = await c.post(RELOAD, json={"version": 1})
            assert r.status_code == 200 and r.json()["version"] == 1
            np.testing.assert_array_equal(images_of(await c.post(GEN, json=body)), v1)
            r = await c.post(RELOAD, json={"version": 9})
            assert r.status_code == 404 and r.json()["error"]["field"] == "version"
            r = await c.post("/v1/models/ghost/reload")
            assert r.status_code == 404 and r.json()["error"]["field"] == "name"
            text = (await c.get("/metrics")).text
            assert metric_value(text, "gan_serve_model_info", model="tiny", version="1") == 1
            assert metric_value(text, "gan_serve_model_info", model="tiny", version="2") == 0
            listing = (await c.get("/v1/models/tiny")).json()
            assert listing["versions"] == [1, 2, 3, 4]

    run(scenario())


def test_hot_swap_under_concurrent_load_fails_no_request(store) -> None:
    write_tiny_model(store, "tiny", 2)

    async def scenario():
        async with running_app(store, max_batch_size=8) as (app, c):
            body = {"seed": 5, "n": 3, "format": "npy"}
            expected = {}
            for version in (1, 2):
                assert (await c.post(RELOAD, json={"version": version})).status_code == 200
                expected[str(version)] = images_of(await c.post(GEN, json=body))
            stop = asyncio.Event()
            results = []

            async def client_loop():
                while not stop.is_set():
                    results.append(await c.post(GEN, json=body))

            async def swapper():
                for i in range(8):
                    r = await c.post(RELOAD, json={"version": 1 + i % 2})
                    assert r.status_code == 200, r.text
                    await asyncio.sleep(0.02)
                stop.set()

            await asyncio.gather(swapper(), *[client_loop() for _ in range(16)])
            assert len(results) > 50
            served = {r.headers.get("x-model-version") for r in results}
            failures = [r for r in results if r.status_code != 200]
            assert not failures, [(r.status_code, r.text) for r in failures[:3]]
            assert served == {"1", "2"}
            for r in results:  # each response's images belong to the version it names
                np.testing.assert_array_equal(images_of(r), expected[r.headers["x-model-version"]])

    run(scenario())


def test_file_watch_loads_new_versions_and_skips_corrupt_ones(store) -> None:
    async def scenario():
        async with running_app(store, watch_interval_s=0.05) as (app, c):
            registry = app.state.registry
            corrupt(write_tiny_model(store, "tiny", 2))
            await asyncio.sleep(0.5)
            assert registry.get("tiny").version == 1  # the corrupt v2 was refused
            write_tiny_model(store, "tiny", 3)
            await wait_for(lambda: registry.get("tiny").version == 3)
            write_tiny_model(store, "other", 1)
            await wait_for(lambda: "other" in registry.models)
            r = await c.post("/v1/models/other/generate", json={"seed": 1})
            assert r.status_code == 200 and r.headers["x-model-name"] == "other"

    run(scenario())


def test_startup_falls_back_past_a_corrupt_highest_version(store) -> None:
    corrupt(write_tiny_model(store, "tiny", 2))

    async def scenario():
        async with running_app(store) as (app, c):
            assert (await c.get("/v1/models/tiny")).json()["version"] == 1

    run(scenario())


def test_reload_can_require_a_token(store) -> None:
    async def scenario():
        async with running_app(store, admin_token="s3cret") as (app, c):
            r = await c.post(RELOAD)
            assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
            r = await c.post(RELOAD, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200

    run(scenario())


def test_versions_by_number_load_beside_the_default(store) -> None:
    for version in (2, 3):
        write_tiny_model(store, "tiny", version)

    async def scenario():
        async with running_app(store, max_pinned_versions=1, version_load_interval_s=0) as (app, c):
            body = {"seed": 8, "n": 2, "format": "npy"}
            default = await c.post(GEN, json=body)
            assert default.headers["x-model-version"] == "3"
            by_version = {}
            for version in (1, 2, 3):
                r = await c.post(f"/v1/models/tiny/versions/{version}/generate", json=body)
                assert r.headers["x-model-version"] == str(version)
                by_version[version] = images_of(r)
            np.testing.assert_array_equal(by_version[3], images_of(default))
            assert not np.array_equal(by_version[1], by_version[2])
            # one pinned slot: v2 evicted v1, which loads again (same images) when asked for
            assert app.state.registry.loaded_versions("tiny") == [2, 3]
            r = await c.post("/v1/models/tiny/versions/1/generate", json=body)
            np.testing.assert_array_equal(images_of(r), by_version[1])
            assert (await c.get("/v1/models/tiny")).json()["loaded_versions"] == [1, 3]
            r = await c.get("/v1/models/tiny/versions/1/generate?seed=8&label=8")
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            etag = r.headers["etag"]
            assert etag != (await c.get(f"{GEN}?seed=8&label=8")).headers["etag"]
            r = await c.get(
                "/v1/models/tiny/versions/1/generate?seed=8&label=8",
                headers={"If-None-Match": etag},
            )
            assert r.status_code == 304
            r = await c.post("/v1/models/tiny/versions/7/generate", json=body)
            assert r.status_code == 404 and r.json()["error"]["field"] == "version"
            r = await c.post("/v1/models/ghost/versions/1/generate", json=body)
            assert r.status_code == 404 and r.json()["error"]["field"] == "name"
            # the pinned version under concurrent load while it is evicted and reloaded
            results = await asyncio.gather(
                *[
                    c.post(f"/v1/models/tiny/versions/{1 + i % 2}/generate", json=body)
                    for i in range(40)
                ]
            )
            for i, r in enumerate(results):
                np.testing.assert_array_equal(images_of(r), by_version[1 + i % 2])

    run(scenario())


def test_pinning_can_be_switched_off(store) -> None:
    write_tiny_model(store, "tiny", 2)

    async def scenario():
        async with running_app(store, max_pinned_versions=0) as (app, c):
            r = await c.post("/v1/models/tiny/versions/1/generate", json={})
            assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_loaded"
            r = await c.post("/v1/models/tiny/versions/2/generate", json={})
            assert r.status_code == 200

    run(scenario())
