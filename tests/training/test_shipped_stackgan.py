"""The committed text-to-image model: intact, its vocabulary the captioner's, its text used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import TEXT_TO_IMAGE, Manifest, latents_from_seeds, version_dirs
from service.text import load_vocabulary
from training.captions import measure, vocabulary

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store" / "mnist-stackgan"


def newest() -> Path:
    versions = version_dirs(MODEL_DIR)
    assert versions, f"{MODEL_DIR} holds no model version"
    return versions[max(versions)]


def test_manifest_files_and_vocabulary() -> None:
    directory = newest()
    manifest = Manifest.load(directory)
    manifest.verify_artifact(directory)  # graph and vocabulary checksums
    assert manifest.kind == TEXT_TO_IMAGE and manifest.family == "stackgan"
    shipped = load_vocabulary(directory, manifest.side_files[0].sha256)
    assert shipped == vocabulary()  # the words the captions were made of
    assert manifest.training["export"]["parity_max_abs_diff"] <= 1
    assert {"digit_read", "attributes", "diversity"} <= set(manifest.evaluation)


def test_caption_changes_the_image_and_thick_means_thicker() -> None:
    directory = newest()
    manifest = Manifest.load(directory)
    vocab = load_vocabulary(directory, manifest.side_files[0].sha256)
    session = ort.InferenceSession(str(directory / "generator.onnx"))
    n = 64
    z = latents_from_seeds(list(range(n)), manifest.nz)

    def images(caption: str) -> np.ndarray:
        tokens = np.tile(vocab.encode(caption), (n, 1))
        return session.run(None, {"z": z, "tokens": tokens})[0][..., 0] / 255.0

    thick, thin = images("a thick zero"), images("a thin zero")
    assert not np.array_equal(thick, thin)
    assert measure(thick)["thickness"].mean() > measure(thin)["thickness"].mean()
