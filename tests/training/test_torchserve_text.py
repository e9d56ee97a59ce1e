"""The TorchServe archive of a text-to-image model: vocabulary and tokenizer travel inside it,
and the handler turns captions into the service's token ids."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.manifest import latents_from_seeds
from tests.support.tiny_text_model import tiny_pixels, write_tiny_text_model
from tests.training.test_torchserve import FakeContext, _post
from training.torchserve_archive import build_mar, mar_contents
from training.torchserve_runner import TorchServeProcess


def test_text_archive_serves_captions_and_names_unknown_words(tmp_path: Path) -> None:
    version_dir = write_tiny_text_model(tmp_path / "store", nz=4, max_tokens=4, size=8)
    mar = build_mar(version_dir, tmp_path / "words.mar")
    assert {"text.py", "vocabulary.json", "manifest.py"} <= set(mar_contents(mar))
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(unpacked)
    spec = importlib.util.spec_from_file_location(
        "ts_text_handler_under_test", unpacked / "torchserve_handler.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    handler, context = module.GeneratorHandler(), FakeContext(unpacked)
    handler.initialize(context)
    requests = [
        {"body": {"seed": 3, "text": "A thick seven"}},
        {"body": {"seed": 3, "text": "a thin one"}},
        {"body": {"seed": 3, "text": "a purple seven"}},
        {"body": {"seed": 3}},
        {"body": {"seed": 3, "label": 1}},
    ]
    out = handler.handle(requests, context)
    z = latents_from_seeds([3, 3], 4)
    tokens = np.array([[1, 2, 5, 0], [1, 3, 4, 0]])  # ids in the tiny vocabulary
    for i, want in enumerate(tiny_pixels(z, tokens)):
        assert (np.asarray(Image.open(io.BytesIO(out[i]))) == want).all()
    assert json.loads(out[2])["error"].startswith("text: unknown words: purple")
    assert json.loads(out[3])["field"] == "text" and json.loads(out[4])["field"] == "label"
    assert context.status == {2: 400, 3: 400, 4: 400}


@pytest.mark.slow
def test_torchserve_serves_a_caption(tmp_path: Path) -> None:
    version_dir = write_tiny_text_model(tmp_path / "store", nz=4, max_tokens=4, size=8)
    mar = build_mar(version_dir, tmp_path / "words.mar")
    with TorchServeProcess(mar, batch_size=2, max_batch_delay_ms=20) as ts:
        status, kind, body = _post(ts.predict_url, {"seed": 3, "text": "a thin one"})
        assert status == 200 and kind.startswith("image/png")
        want = tiny_pixels(latents_from_seeds([3], 4), np.array([[1, 3, 4, 0]]))[0]
        assert (np.asarray(Image.open(io.BytesIO(body))) == want).all()
        status, _, body = _post(ts.predict_url, {"seed": 3, "text": "a purple one"})
        assert status == 400 and json.loads(body)["field"] == "text"
