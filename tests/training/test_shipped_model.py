"""The committed model in model_store: intact, documented, and as good as its manifest says.

The recorded figures are checked against the targets, and conditional accuracy is measured
again on a fresh sample (seeds the evaluation never used) with the reference classifier.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.manifest import Manifest, version_dirs
from training.classifier import load_reference_classifier, predict
from training.evaluate import (
    SAMPLE_SEED_BASE,
    TARGET_CAS_RATIO,
    TARGET_CONDITIONAL_ACCURACY,
    GeneratorRunner,
    balanced_labels,
    to_tanh_tensor,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "model_store" / "mnist-cdcgan"
FRESH_SEED_BASE = 7_000_000  # disjoint from the evaluation's seeds
FRESH_SAMPLES = 2000


@pytest.fixture(scope="module")
def shipped() -> tuple[Path, Manifest]:
    versions = version_dirs(MODEL_DIR)
    assert versions, f"no shipped model under {MODEL_DIR}"
    version_dir = versions[max(versions)]
    return version_dir, Manifest.load(version_dir)


def test_shipped_model_is_intact_and_conditional(shipped):
    version_dir, m = shipped
    m.verify_artifact(version_dir)  # sha256 of generator.onnx
    assert (m.name, m.num_classes, m.image_size, m.channels, m.nz) == (
        "mnist-cdcgan",
        10,
        32,
        1,
        100,
    )
    assert m.class_names == [str(d) for d in range(10)]
    assert m.training["command"].startswith("gan-train")
    assert (m.training.get("wall_time_s") or m.training["elapsed_s"]) > 0
    assert m.training["export"]["parity_max_abs_diff"] <= 1
    assert (version_dir / "report.md").is_file() and (version_dir / "samples.png").is_file()


def test_archive_holds_the_same_generator(shipped):
    version_dir, m = shipped
    with zipfile.ZipFile(REPO / "model_store" / "mnist-cdcgan.mar") as mar:
        onnx_bytes = mar.read("generator.onnx")
        packed = Manifest.model_validate_json(mar.read("manifest.json"))
    assert hashlib.sha256(onnx_bytes).hexdigest() == m.artifact.sha256
    assert packed.version == m.version


def test_recorded_evaluation_meets_targets(shipped):
    _, m = shipped
    ev = m.evaluation
    assert ev["conditional_accuracy"] >= TARGET_CONDITIONAL_ACCURACY
    assert ev["cas"] >= TARGET_CAS_RATIO * ev["cas_real_trained_accuracy"]
    assert ev["cas_ratio"] == pytest.approx(ev["cas"] / ev["cas_real_trained_accuracy"], abs=1e-3)
    assert ev["meets_targets"] is True
    assert 0 < ev["frechet_distance_real_floor"] <= ev["frechet_distance"]
    assert ev["cas_train_samples"] == 4000 and ev["conditional_accuracy_samples"] >= 1000


@pytest.mark.slow
def test_conditional_accuracy_holds_on_a_fresh_sample(shipped):
    version_dir, m = shipped
    assert FRESH_SEED_BASE > SAMPLE_SEED_BASE + m.evaluation["conditional_accuracy_samples"]
    runner = GeneratorRunner(version_dir)
    seeds = FRESH_SEED_BASE + np.arange(FRESH_SAMPLES)
    labels = balanced_labels(FRESH_SAMPLES, 10)
    images = runner.generate(seeds, labels)
    reference = load_reference_classifier(m.image_size)
    assert reference.heldout_accuracy >= 0.95
    accuracy = float((predict(reference.model, to_tanh_tensor(images)) == labels).mean())
    assert accuracy >= TARGET_CONDITIONAL_ACCURACY
    assert accuracy == pytest.approx(m.evaluation["conditional_accuracy"], abs=0.03)
