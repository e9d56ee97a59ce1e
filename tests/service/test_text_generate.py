"""POST /v1/models/{name}/generate with ``text`` for a text-to-image model, and its refusals."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.manifest import Manifest, latents_from_seeds
from service.text import CaptionError, Vocabulary
from tests.service.conftest import run, running_app
from tests.support.tiny_model import write_tiny_model
from tests.support.tiny_text_model import WORDS, tiny_pixels, write_tiny_text_model

URL = "/v1/models/words/generate"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_tiny_text_model(tmp_path, "words")
    write_tiny_model(tmp_path, "tiny", 1)
    return tmp_path


def images(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body))


def test_captions_and_seeds_make_the_images(store: Path) -> None:
    async def go():
        async with running_app(store) as (_, client):
            one = {"text": "a thick seven", "seed": 5, "n": 3, "format": "npy"}
            first = await client.post(URL, json=one)
            again = await client.post(URL, json=one)
            png_a = await client.post(URL, json={"text": "A thick, seven.", "seed": 5})
            png_b = await client.post(URL, json={"text": "a thick seven", "seed": 5})
            per_image = {"text": ["one", "a thin one"], "seed": 9, "format": "npy"}
            listed = await client.post(URL, json=per_image)
            info = await client.get("/v1/models/words")
            return first, again, png_a, png_b, listed, info

    first, again, png_a, png_b, listed, info = run(go())
    assert first.status_code == 200, first.text
    assert first.content == again.content and png_a.content == png_b.content
    got = images(first.content)
    tokens = np.tile([[1, 2, 5, 0]], (3, 1))  # a thick seven <pad>
    want = tiny_pixels(latents_from_seeds([5, 6, 7], 4), tokens)
    assert np.array_equal(got[:, 0, 0, 0], want) and len(set(want.tolist())) == 3
    both = images(listed.content)
    assert both.shape[0] == 2
    want = tiny_pixels(latents_from_seeds([9, 10], 4), np.array([[4, 0, 0, 0], [1, 3, 4, 0]]))
    assert np.array_equal(both[:, 0, 0, 0], want)
    body = info.json()
    assert body["kind"] == "text-to-image" and body["vocabulary"] == list(WORDS[1:])
    assert body["max_caption_words"] == 4


@pytest.mark.parametrize(
    ("request_body", "field", "code", "says"),
    [
        ({"text": "a thick zebra"}, "text", "unknown_words", "zebra"),
        ({"text": "   "}, "text", "invalid_value", "empty"),
        ({"text": "a thick thin one seven"}, "text", "invalid_value", "at most 4"),
        ({"text": "x" * 300}, "text", "invalid_value", "at most 256"),
        ({"n": 2}, "text", "invalid_value", "caption"),
        ({"text": ["one", "seven"], "n": 3}, "text", "invalid_value", "n=3"),
        ({"text": "one", "labels": 1}, "labels", "invalid_value", "caption"),
        ({"text": ["one", "a zebra"]}, "text", "unknown_words", "caption 1"),
    ],
)
def test_bad_captions_are_refused(
    store: Path, request_body: dict, field: str, code: str, says: str
) -> None:
    async def go():
        async with running_app(store) as (_, client):
            return await client.post(URL, json=request_body)

    answer = run(go())
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["field"], error["code"]) == (field, code)
    assert says in error["message"]
    if code == "unknown_words":
        assert "GET /v1/models/words" in error["message"]


def test_routes_refuse_the_other_kind(store: Path) -> None:
    async def go():
        async with running_app(store) as (_, client):
            z = {"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}
            infer = {"inputs": [z]}
            return (
                await client.get(URL),
                await client.post("/v1/models/words/interpolate", json={"seeds": [1, 2]}),
                await client.post("/v2/models/words/infer", json=infer),
                await client.post("/v1/models/tiny/generate", json={"text": "one"}),
            )

    get_png, walk, infer, text_to_noise = run(go())
    for answer in (get_png, walk):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "wrong_model_kind"
        assert "text" in answer.json()["error"]["message"]
    assert infer.status_code == 400 and "text" in infer.json()["error"]
    assert text_to_noise.status_code == 422
    assert text_to_noise.json()["error"]["field"] == "text"


def test_vocabulary_file_is_checked(store: Path) -> None:
    directory = store / "words" / "1"
    manifest = Manifest.load(directory)
    manifest.verify_artifact(directory)
    (directory / "vocabulary.json").write_text(Vocabulary(WORDS + ("zebra",), 4).to_json())
    with pytest.raises(ValueError, match="sha256"):
        manifest.verify_artifact(directory)


def test_tokenizer_pads_and_names_unknown_words() -> None:
    vocab = Vocabulary(WORDS, 4)
    assert vocab.encode("Seven, thick").tolist() == [5, 2, 0, 0]
    assert vocab.decode(vocab.encode("a thin one")) == "a thin one"
    with pytest.raises(CaptionError) as caught:
        vocab.encode("a <pad> zebra")
    assert caught.value.unknown == ["<pad>", "zebra"]


def test_open_inference_protocol_takes_captions(store: Path) -> None:
    z = [[0.5] * 4, [-0.5] * 4]

    def body(text: list[str]) -> dict:
        return {
            "inputs": [
                {"name": "z", "datatype": "FP32", "shape": [2, 4], "data": z},
                {"name": "text", "datatype": "BYTES", "shape": [len(text)], "data": text},
            ]
        }

    async def go():
        async with running_app(store) as (_, client):
            return (
                await client.get("/v2/models/words"),
                await client.post("/v2/models/words/infer", json=body(["a thin one", "seven"])),
                await client.post("/v2/models/words/infer", json=body(["a zebra"])),
                await client.post("/v2/models/words/infer", json=body(["one", "two", "six"])),
            )

    meta, ok, unknown, too_many = run(go())
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta.json()["inputs"]
    assert ok.status_code == 200, ok.text
    pixels = np.array(ok.json()["outputs"][0]["data"], np.uint8).reshape(2, 8, 8, 1)
    want = tiny_pixels(np.array(z, np.float32), np.array([[1, 3, 4, 0], [5, 0, 0, 0]]))
    assert np.array_equal(pixels[:, 0, 0, 0], want)
    assert unknown.status_code == 400 and "zebra" in unknown.json()["error"]
    assert too_many.status_code == 400 and "n=2" in too_many.json()["error"]


def test_client_sends_captions(store: Path) -> None:
    from ganclient import AsyncGanClient

    async def go():
        async with running_app(store) as (app, _):
            transport = httpx.ASGITransport(app=app)
            async with AsyncGanClient("http://localhost", "words", transport=transport) as client:
                return (
                    await client.generate(3, seed=2, text="a thick seven"),
                    await client.generate(2, seed=2, text=["one", "seven"]),
                )

    same, each = run(go())
    z = latents_from_seeds([2, 3, 4], 4)
    assert np.array_equal(same[:, 0, 0, 0], tiny_pixels(z, np.tile([[1, 2, 5, 0]], (3, 1))))
    want = tiny_pixels(z[:2], np.array([[4, 0, 0, 0], [5, 0, 0, 0]]))
    assert np.array_equal(each[:, 0, 0, 0], want)
