"""The shipped generator in the repository's model_store, served by the real CLI."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service.manifest import Manifest, version_dirs
from tests.support.server import REPO_ROOT, ServiceProcess

STORE = REPO_ROOT / "model_store"
NAME = "mnist-cdcgan"


@pytest.mark.slow
def test_cli_serves_real_digits_from_the_shipped_model() -> None:
    versions = version_dirs(STORE / NAME)
    assert versions, f"{STORE / NAME} holds no model version"
    newest = Manifest.load(versions[max(versions)])
    assert (newest.num_classes, newest.image_size, newest.channels, newest.nz) == (10, 32, 1, 100)
    with ServiceProcess(STORE) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        info = client.get(f"/v1/models/{NAME}").json()
        assert info["version"] == max(versions) and info["provider"] in ("cpu", "cuda")
        r = client.get(f"/v1/models/{NAME}/generate", params={"seed": 7, "label": 3})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        digit = np.asarray(Image.open(io.BytesIO(r.content)))
        assert digit.shape == (32, 32)
        # a digit: mostly dark background with some bright strokes
        assert (digit < 64).mean() > 0.5 and (digit > 192).mean() > 0.03
        r = client.post(
            f"/v1/models/{NAME}/generate",
            json={"seed": 0, "n": 10, "labels": list(range(10)), "format": "npy"},
        )
        images = np.load(io.BytesIO(r.content))
        assert images.shape == (10, 32, 32, 1)
        assert len({img.tobytes() for img in images}) == 10
