"""A text-to-image model in-process: LocalGenerator, gan-sample --text and the Dataset, all
tokenising captions with the shipped vocabulary as the service does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganclient.dataset import GanDataset
from ganclient.local import LocalGenerator
from ganclient.sample import main
from service.manifest import latents_from_seeds
from service.text import CaptionError
from tests.support.tiny_text_model import tiny_pixels, write_tiny_text_model

TOKENS = {"a thick seven": [1, 2, 5, 0], "a thin one": [1, 3, 4, 0]}  # tiny vocabulary ids


@pytest.fixture(scope="module")
def text_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("text-store")
    write_tiny_text_model(store, "words", nz=4, max_tokens=4, size=8)
    return store


def expected(caption: str, seed: int) -> int:
    return int(tiny_pixels(latents_from_seeds([seed], 4), np.array([TOKENS[caption]]))[0])


def test_local_generator_draws_from_captions(text_store: Path) -> None:
    gen = LocalGenerator(text_store, "words", chunk_size=2)
    assert gen.info().takes_text
    images = gen.generate(3, seed=5, text=["a thick seven", "A thin one.", "a thick seven"])
    assert images.shape == (3, 8, 8, 1)
    assert [int(images[i, 0, 0, 0]) for i in range(3)] == [
        expected("a thick seven", 5),
        expected("a thin one", 6),
        expected("a thick seven", 7),
    ]
    same = gen.generate(3, seed=5, text="a thick seven")
    assert np.array_equal(same[0], images[0]) and np.array_equal(same[2], images[2])
    with pytest.raises(CaptionError, match="unknown words: purple"):
        gen.generate(1, seed=0, text="a purple seven")
    with pytest.raises(ValueError, match="pass text"):
        gen.generate(1, seed=0)
    with pytest.raises(ValueError, match="one caption for all"):
        gen.generate(3, seed=0, text=["a thin one", "a thick seven"])


def test_gan_sample_writes_one_folder_per_caption(text_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "folder"
    args = ["-n", "4", "-o", str(out), "--local", str(text_store), "--model", "words"]
    assert main([*args, "--text", "a thick seven", "--text", "a thin one", "--no-progress"]) == 0
    captions = json.loads((out / "captions.json").read_text())
    assert captions == {"a_thick_seven": "a thick seven", "a_thin_one": "a thin one"}
    one = np.asarray(Image.open(out / "a_thin_one" / "000000000003.png"))
    assert (one == expected("a thin one", 3)).all()
    assert len(list(out.rglob("*.png"))) == 4
    npz = tmp_path / "set.npz"
    common = ["-n", "2", "--local", str(text_store), "--model", "words", "--no-progress"]
    assert main([*common, "-o", str(npz), "--layout", "npz", "--text", "a thin one"]) == 0
    with np.load(npz) as data:
        assert list(data["captions"]) == ["a thin one"] * 2 and "labels" not in data
    assert main([*common, "-o", str(tmp_path / "none")]) == 2  # a text model needs --text
    assert main([*common, "-o", str(tmp_path / "bad"), "--text", "a purple one"]) == 2


def test_dataset_streams_images_with_their_captions(text_store: Path) -> None:
    data = GanDataset(
        None, "words", local=text_store, num_samples=5, captions=["a thin one", "a thick seven"]
    )
    items = list(data)
    assert [caption for _, caption in items] == ["a thin one", "a thick seven"] * 2 + ["a thin one"]
    image, caption = items[3]
    assert image.shape == (1, 8, 8) and caption == "a thick seven"
    assert torch.allclose(image, torch.full_like(image, expected(caption, 3) / 255.0))
    with pytest.raises(ValueError, match="pass text"):
        list(GanDataset(None, "words", local=text_store, num_samples=1))
