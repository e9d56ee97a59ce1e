"""TorchServe archive and handler: the .mar is self-contained, the handler validates each
request on its own, and TorchServe on loopback serves the same pixels as ONNX Runtime."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.manifest import latent_from_seed
from training.export import export_random_generator
from training.model import ModelConfig
from training.torchserve_archive import build_mar, mar_contents
from training.torchserve_runner import TorchServeProcess

CFG = ModelConfig(image_size=16, ngf=8, nz=8, embed_dim=4, num_classes=10)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(version dir, .mar) of a small random conditional generator."""
    store = tmp_path_factory.mktemp("store")
    version_dir = export_random_generator(store, "tiny-ts", CFG, seed=5)
    return version_dir, build_mar(version_dir, store / "tiny-ts.mar")


class FakeContext:
    """The parts of TorchServe's Context the handler uses."""

    def __init__(self, model_dir: Path):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.status: dict[int, int] = {}
        self.content_type: dict[int, str] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


def _expected(version_dir: Path, z: np.ndarray, label: int) -> np.ndarray:
    session = ort.InferenceSession(
        str(version_dir / "generator.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = {"z": z[None].astype(np.float32), "label": np.array([label], dtype=np.int64)}
    return session.run(["image"], feeds)[0][0, ..., 0]


def _png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture()
def handler(archive, tmp_path: Path):
    """The handler module and an initialised instance, loaded from the unpacked archive."""
    import importlib.util
    import sys

    _, mar = archive
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(tmp_path)
    spec = importlib.util.spec_from_file_location(
        "ts_handler_under_test", tmp_path / "torchserve_handler.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    instance = module.GeneratorHandler()
    context = FakeContext(tmp_path)
    instance.initialize(context)
    return instance, context


def test_archive_is_self_contained(archive):
    _, mar = archive
    assert mar_contents(mar) == [
        "MAR-INF/MANIFEST.json",
        "generator.onnx",
        "manifest.json",
        "manifest.py",
        "torchserve_handler.py",
    ]
    with zipfile.ZipFile(mar) as zf:
        meta = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    assert meta["model"]["modelName"] == "tiny-ts"
    assert meta["model"]["handler"] == "torchserve_handler.py"


def test_handler_serves_a_batch_and_refuses_bad_requests_one_by_one(archive, handler):
    version_dir, _ = archive
    instance, context = handler
    z = np.linspace(-1, 1, CFG.nz).tolist()
    requests = [
        {"body": {"seed": 7, "label": 3}},  # decoded JSON, as TorchServe passes it
        {"body": json.dumps({"z": z, "label": 1}).encode()},  # raw bytes
        {"body": {"seed": 7}},  # conditional model: label required
        {"body": {"seed": 1, "z": z, "label": 0}},  # both latent sources
        {"body": {"z": z[:-1], "label": 0}},  # wrong latent size
        {"body": b"{not json"},
        {"body": {"seed": True, "label": 0}},  # a bool is not a seed
        {"body": {"seed": -1, "label": 0}},
        {"body": {"seed": 2, "label": 10}},
        {"body": {"seed": 2, "label": 1, "extra": 1}},
    ]
    out = instance.handle(requests, context)
    assert len(out) == len(requests)
    np.testing.assert_array_equal(
        _png_pixels(out[0]), _expected(version_dir, latent_from_seed(7, CFG.nz), 3)
    )
    np.testing.assert_array_equal(
        _png_pixels(out[1]), _expected(version_dir, np.asarray(z, dtype=np.float32), 1)
    )
    assert context.content_type[0] == context.content_type[1] == "image/png"
    expected_fields = ["label", "seed", "z", "body", "seed", "seed", "label", "extra"]
    for i, field in enumerate(expected_fields, start=2):
        assert context.status[i] == 400, i
        error = json.loads(out[i])
        assert error["field"] == field, (i, error)
        assert context.content_type[i] == "application/json"
    assert 0 not in context.status and 1 not in context.status


def _post(url: str, body: dict) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


@pytest.mark.slow
def test_torchserve_serves_the_archive_like_onnxruntime(archive):
    version_dir, mar = archive
    with TorchServeProcess(mar, batch_size=4, max_batch_delay_ms=20) as ts:
        pid = ts.pid
        status, ctype, body = _post(ts.predict_url, {"seed": 7, "label": 3})
        assert status == 200 and ctype.startswith("image/png")
        np.testing.assert_array_equal(
            _png_pixels(body), _expected(version_dir, latent_from_seed(7, CFG.nz), 3)
        )

        # Concurrent requests get batched by TorchServe; each still gets its own image.
        def one(seed: int) -> tuple[int, bytes]:
            code, _, data = _post(ts.predict_url, {"seed": seed, "label": seed % 10})
            return code, data

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(100, 116)))
        for seed, (code, data) in zip(range(100, 116), results, strict=True):
            assert code == 200
            expected = _expected(version_dir, latent_from_seed(seed, CFG.nz), seed % 10)
            np.testing.assert_array_equal(_png_pixels(data), expected)

        status, _, body = _post(ts.predict_url, {"seed": 7, "label": 42})
        assert status == 400
        assert json.loads(body)["field"] == "label"

        described = ts.model_status()[0]
        assert described["batchSize"] == 4
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by PID on exit
