"""An image-to-image model behind a real service: the Python client's translate(), Open
Inference Protocol with a UINT8 image input (tritonclient), and gan-sample --translate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from ganclient.client import GanClient, GanServeError
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
    assert err.value.status_code == 415


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
