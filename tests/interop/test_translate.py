"""An image-to-image model behind a real service: the Python client's translate(), Open
Inference Protocol with a UINT8 image input (tritonclient), and gan-sample --translate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from ganclient.client import AsyncGanClient, GanClient, GanServeError
from ganclient.sample import main as sample_main
from tests.support.tiny_translator import write_tiny_translator


@pytest.fixture(scope="module")
def translator_service(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.server import ServiceProcess

    store = tmp_path_factory.mktemp("translator-store")
    write_tiny_translator(store, "flip")
    with ServiceProcess(store, "--threads", "1", "--no-warmup") as proc:
        yield proc


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_client_translate(translator_service) -> None:
    x = images(5)
    with GanClient(translator_service.url, "flip", chunk_size=2) as client:
        assert np.array_equal(client.translate(x), 255 - x)  # three requests
        assert np.array_equal(client.translate(x, "B->A"), x)
        pics = client.translate(x[:1], pil=True)
        assert pics[0].mode == "L" and np.array_equal(np.asarray(pics[0]), 255 - x[0, :, :, 0])
        with pytest.raises(GanServeError) as err:
            client.translate([b"not an image"])
        with pytest.raises(ValueError, match="no images"):
            client.translate([])
    assert err.value.status_code == 415


def test_async_client_translate(translator_service) -> None:
    """Chunks run concurrently and come back in order; errors as the sync client's."""
    x = images(7)

    async def run() -> tuple[np.ndarray, np.ndarray, list, GanServeError]:
        async with AsyncGanClient(
            translator_service.url, "flip", chunk_size=2, max_concurrency=3
        ) as client:
            forward, back = await asyncio.gather(client.translate(x), client.translate(x, "B->A"))
            pics = await client.translate(x[:1], pil=True)
            with pytest.raises(GanServeError) as err:
                await client.translate([b"not an image"])
            with pytest.raises(ValueError, match="no images"):
                await client.translate([])
        return forward, back, pics, err.value

    forward, back, pics, err = asyncio.run(run())
    assert np.array_equal(forward, 255 - x) and np.array_equal(back, x)
    assert pics[0].mode == "L" and np.array_equal(np.asarray(pics[0]), 255 - x[0, :, :, 0])
    assert err.status_code == 415


def test_open_inference_protocol_uint8_input(translator_service) -> None:
    tc = triton.InferenceServerClient(translator_service.url.removeprefix("http://"))
    try:
        meta = tc.get_model_metadata("flip")
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
            ("source", "UINT8"),
            ("direction", "INT64"),
        ]
        x = images(4)
        source = triton.InferInput("source", list(x.shape), "UINT8")
        source.set_data_from_numpy(x, binary_data=True)
        direction = triton.InferInput("direction", [4], "INT64")
        direction.set_data_from_numpy(np.array([0, 1, 0, 1], np.int64), binary_data=True)
        out = tc.infer("flip", [source, direction]).as_numpy("image")
    finally:
        tc.close()
    assert np.array_equal(out[0::2], 255 - x[0::2]) and np.array_equal(out[1::2], x[1::2])


def test_gan_sample_translates_a_folder(translator_service, tmp_path: Path, capsys) -> None:
    x = images(3)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, image in enumerate(x):
        folder = tmp_path / "in" / ("sub" if i == 2 else "")
        Image.fromarray(image[:, :, 0]).save(folder / f"d{i}.png")
    args = ["--translate", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    args += ["--url", translator_service.url, "--model", "flip", "--chunk-size", "2"]
    assert sample_main(args) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "sub" / "d2.png"))
    assert np.array_equal(written, 255 - x[2, :, :, 0])
    assert sample_main(args) == 0
    assert "wrote 0 translated images, 3 already there" in capsys.readouterr().out


CORNER_PIXEL = """async img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let centre = 0;
  for (let y = 3; y < 5; y++) for (let x = 3; x < 5; x++) centre += d[(y * c.width + x) * 4];
  return [d[0], centre / 4];
}"""


@pytest.mark.slow
def test_playground_draw_and_translate_in_chromium(translator_service) -> None:
    """Draw a stroke through the centre of the canvas; the inverting model answers a light
    image with a dark centre (A->B), B->A gives the drawing back (dark corner, light centre)."""
    from playwright.sync_api import sync_playwright

    from tests.interop.test_playground import CHROMIUM

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{translator_service.url}/")
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            assert page.is_visible("#translate-panel") and not page.is_visible("#samples-panel")
            box = page.locator("#sketch").bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            for dy in (-24, -12, 0, 12, 24):  # a band about a quarter of the canvas high
                page.mouse.move(cx - 60, cy + dy)
                page.mouse.down()
                page.mouse.move(cx + 60, cy + dy, steps=6)
                page.mouse.up()
            page.wait_for_function(
                "() => { const i = document.querySelector('#translated');"
                " return i.dataset.direction === 'A->B' && i.complete && i.naturalWidth === 8; }"
            )
            corner, centre = page.eval_on_selector("#translated", CORNER_PIXEL)
            assert corner == 255 and centre < 128
            page.select_option("#direction", "B->A")
            page.wait_for_function(
                "() => { const i = document.querySelector('#translated');"
                " return i.dataset.direction === 'B->A' && i.complete && i.naturalWidth === 8; }"
            )
            corner, centre = page.eval_on_selector("#translated", CORNER_PIXEL)
            assert corner == 0 and centre > 128
            assert errors == []
        finally:
            browser.close()
