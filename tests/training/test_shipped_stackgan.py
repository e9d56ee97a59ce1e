"""The committed text-to-image model: intact, its vocabulary the captioner's, its text used."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import TEXT_TO_IMAGE, Manifest, latents_from_seeds, version_dirs
from service.text import load_vocabulary
from training.captions import captions_for, measure, vocabulary
from training.classifier import load_reference_classifier, predict
from training.data import load_embedded_mnist
from training.text_eval import ATTRIBUTE_TARGET, DIGIT_TARGET, OnnxTextGenerator, to_tanh

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


def test_recorded_scores_hold_on_fresh_seeds_and_claim_only_met_targets() -> None:
    directory = newest()
    manifest = Manifest.load(directory)
    figures = manifest.evaluation
    met = figures["targets_met"]
    assert met["digit_read"] == (figures["digit_read"] >= DIGIT_TARGET)
    for name, agree in figures["attributes"].items():
        assert met[name] == (agree["agree"] >= ATTRIBUTE_TARGET), name
    _, heldout = load_embedded_mnist(32)  # the same 1,000 digits, another phrasing and seeds
    digits = heldout.labels.numpy()
    pixels = (heldout.images[:, 0].numpy() + 1.0) / 2.0
    captions = [opts[-1] for opts in captions_for(pixels, digits)]
    images = OnnxTextGenerator(directory, manifest)(captions, 7_000_000 + np.arange(len(digits)))
    read = predict(load_reference_classifier(32).model, to_tanh(images))
    fresh = float((read == digits).mean())
    assert abs(fresh - figures["digit_read"]) <= 0.04, (fresh, figures["digit_read"])


def test_archive_holds_the_same_generator_vocabulary_and_tokenizer() -> None:
    directory = newest()
    manifest = Manifest.load(directory)
    with zipfile.ZipFile(MODEL_DIR.parent / "mnist-stackgan.mar") as mar:
        assert hashlib.sha256(mar.read("generator.onnx")).hexdigest() == manifest.artifact.sha256
        vocab = hashlib.sha256(mar.read("vocabulary.json")).hexdigest()
        assert vocab == manifest.side_files[0].sha256 and "text.py" in mar.namelist()
        assert Manifest.model_validate_json(mar.read("manifest.json")) == manifest
