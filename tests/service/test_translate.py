"""POST /v1/models/{name}/translate: bodies of every kind, batching, and refusals (never 500)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import run, running_app
from tests.support.tiny_model import write_tiny_model
from tests.support.tiny_translator import write_tiny_translator

URL = "/v1/models/flip/translate"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_tiny_translator(tmp_path, "flip")
    write_tiny_model(tmp_path, "tiny", 1)
    return tmp_path


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)


def decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def test_raw_png_and_jpeg_both_directions(store: Path) -> None:
    image = digit(1)

    async def go():
        async with running_app(store) as (_, client):
            to_b = await client.post(URL, content=png(image), headers={"content-type": "image/png"})
            to_a = await client.post(
                URL + "?direction=B->A", content=png(image), headers={"content-type": "image/png"}
            )
            buffer = io.BytesIO()
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="JPEG")
            jpeg = await client.post(
                URL, content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
            )
            return to_b, to_a, jpeg

    to_b, to_a, jpeg = run(go())
    assert to_b.status_code == 200 and to_b.headers["x-direction"] == "A->B"
    assert np.array_equal(decoded(to_b.content), 255 - image)
    assert np.array_equal(decoded(to_a.content), image)
    assert jpeg.status_code == 200 and decoded(jpeg.content).min() >= 250


def test_multipart_json_and_conversion(store: Path) -> None:
    a, b = digit(2), digit(3)
    colour = np.random.default_rng(4).integers(0, 256, (24, 40, 3), dtype=np.uint8)

    async def go():
        async with running_app(store) as (_, client):
            files = [("images", ("a.png", png(a), "image/png")), ("images", ("b.png", png(b)))]
            multi = await client.post(URL, files=files, data={"direction": "B->A", "format": "npy"})
            url = "data:image/png;base64," + base64.b64encode(png(a)).decode()
            document = {"images": [url, b.tolist(), colour.tolist()], "format": "json"}
            as_json = await client.post(URL, json=document)
            return multi, as_json

    multi, as_json = run(go())
    assert multi.status_code == 200, multi.text
    images = np.load(io.BytesIO(multi.content))
    assert images.shape == (2, 8, 8, 1) and np.array_equal(images[:, :, :, 0], np.stack([a, b]))
    assert as_json.status_code == 200, as_json.text
    items = as_json.json()["images"]
    assert np.array_equal(decoded(base64.b64decode(items[0]["png"])), 255 - a)
    assert np.array_equal(decoded(base64.b64decode(items[1]["png"])), 255 - b)
    # a 40x24 RGB image: grey, shorter side scaled to 8 and the centre cut, as training did
    grey = Image.fromarray(colour).convert("L").resize((13, 8), Image.Resampling.BICUBIC)
    expected = 255 - np.asarray(grey.crop((2, 0, 10, 8)))
    assert np.array_equal(decoded(base64.b64decode(items[2]["png"])), expected)


def test_concurrent_directions_share_the_batcher(store: Path) -> None:
    images = [digit(10 + i) for i in range(8)]

    async def go():
        async with running_app(store) as (_, client):
            return await asyncio.gather(
                *[
                    client.post(
                        URL + ("?direction=B->A" if i % 2 else ""),
                        content=png(im),
                        headers={"content-type": "image/png"},
                    )
                    for i, im in enumerate(images)
                ]
            )

    for i, (image, answer) in enumerate(zip(images, run(go()), strict=True)):
        assert answer.status_code == 200
        assert np.array_equal(decoded(answer.content), image if i % 2 else 255 - image)


def bomb(side: int) -> bytes:
    """A small PNG that declares side x side pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height, then IEND: a header and no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("image/png", bomb(400), 413, "image_too_large"),
        ("image/png", png_header(60_000, 60_000), 413, "image_too_large"),
        ("image/png", png_header(4, 4), 422, "broken_image"),
        ("image/png", png(digit(5))[:40], 422, "broken_image"),
        ("image/png", b"GIF89a" + bytes(40), 415, "unsupported_media_type"),
        ("text/plain", b"hello", 415, "unsupported_media_type"),
        ("application/json", b'{"images": ["data:image/gif;base64,AAAA"]}', 422, "invalid_value"),
        ("application/json", b'{"images": [[[0, 300]]]}', 422, "invalid_value"),
        ("application/json", b'{"images": []}', 422, "invalid_value"),
        ("application/json", b"{", 400, "malformed_json"),
        ("image/png", bytes(3000), 413, "body_too_large"),
    ],
)
def test_bad_bodies_are_refused(
    store: Path, content_type: str, body: bytes, status: int, code: str
) -> None:
    async def go():
        async with running_app(store, max_input_pixels=100_000, max_body_bytes=2048) as (_, c):
            return await c.post(URL, content=body, headers={"content-type": content_type})

    answer = run(go())
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_routes_refuse_the_other_kind(store: Path) -> None:
    async def go():
        async with running_app(store) as (_, client):
            return (
                await client.post("/v1/models/flip/generate", json={"n": 1}),
                await client.get("/v1/models/flip/generate"),
                await client.post(
                    "/v1/models/tiny/translate",
                    content=png(digit(6)),
                    headers={"content-type": "image/png"},
                ),
                await client.get("/v1/models"),
                await client.post(
                    URL + "?direction=C->D",
                    content=png(digit(6)),
                    headers={"content-type": "image/png"},
                ),
            )

    generate_post, generate_get, translate_tiny, listing, bad_direction = run(go())
    kinds = {m["name"]: m["kind"] for m in listing.json()["models"]}
    assert kinds == {"flip": "image-to-image", "tiny": "noise-to-image"}
    for answer in (generate_post, generate_get, translate_tiny):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "wrong_model_kind"
    assert "translate" in generate_post.json()["error"]["message"]
    assert bad_direction.status_code == 422
    assert bad_direction.json()["error"]["field"] == "direction"
    assert json.loads(bad_direction.content)["error"]["code"] == "invalid_value"
