"""The committed models in model_store: intact, documented, as good as their manifests say,
and answered by the service.

The recorded figures are checked against the targets, and conditional accuracy (or the
Inception Score, for unconditional models) is measured again on a fresh sample (seeds the
evaluation never used) with the reference classifier.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.manifest import MAX_SEED, Manifest, model_latents, version_dirs
from tests.support.server import ServiceProcess
from training.classifier import load_reference_classifier, predict, probabilities
from training.evaluate import (
    SAMPLE_SEED_BASE,
    TARGET_CAS_RATIO,
    TARGET_CONDITIONAL_ACCURACY,
    TARGET_IS_RATIO,
    GeneratorRunner,
    balanced_labels,
    inception_score,
    to_tanh_tensor,
)
from training.families import FAMILIES

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "model_store"


def _generators(store: Path) -> list[str]:
    """The shipped noise-to-image models (image-to-image ones: test_shipped_translator.py,
    text-to-image ones: test_shipped_stackgan.py)."""
    names = []
    for p in store.iterdir():
        versions = version_dirs(p) if p.is_dir() else {}
        if versions and Manifest.load(versions[max(versions)]).kind == "noise-to-image":
            names.append(p.name)
    return sorted(names)


SHIPPED = _generators(STORE)
# Models whose documentation says they meet their targets; the rest record a shortfall.
MEETS_TARGETS = {"mnist-cdcgan", "biggan-mnist", "progan-mnist", "gan2014"}
FRESH_SEED_BASE = 7_000_000  # disjoint from the evaluation's seeds
FRESH_SAMPLES = 2000


def _newest(name: str) -> tuple[Path, Manifest]:
    versions = version_dirs(STORE / name)
    version_dir = versions[max(versions)]
    return version_dir, Manifest.load(version_dir)


def test_the_store_ships_the_demo_model_and_one_per_family() -> None:
    assert "mnist-cdcgan" in SHIPPED
    families = {_newest(name)[1].family or "dcgan" for name in SHIPPED}
    assert families <= set(FAMILIES) and "gan2014" in families


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_intact_and_documented(name: str) -> None:
    version_dir, m = _newest(name)
    m.verify_artifact(version_dir)  # sha256 of generator.onnx
    assert m.name == name and (m.image_size, m.channels) == (32, 1)
    assert m.nz == m.training["model_config"]["nz"]
    if m.conditional:
        assert m.class_names == [str(d) for d in range(10)]
    assert m.family in FAMILIES and m.paper
    assert m.training["command"].removeprefix("nice -n 10 ").startswith("gan-train")
    assert (m.training.get("wall_time_s") or m.training["elapsed_s"]) > 0
    assert m.training["export"]["parity_max_abs_diff"] <= 1
    assert (version_dir / "report.md").is_file() and (version_dir / "samples.png").is_file()
    assert (version_dir / "generator.onnx").stat().st_size < 12_000_000  # a few MB


@pytest.mark.parametrize("name", SHIPPED)
def test_archive_holds_the_same_generator(name: str, tmp_path: Path) -> None:
    """The .mar packs the newest version as committed: its ONNX, its whole manifest (an
    archive built before a re-evaluation would report stale figures), and a copy of the model
    contract that turns seeds into the same latents as the service's."""
    from training.torchserve_handler import _load_contract

    version_dir, m = _newest(name)
    with zipfile.ZipFile(STORE / f"{name}.mar") as mar:
        onnx_bytes = mar.read("generator.onnx")
        packed = Manifest.model_validate_json(mar.read("manifest.json"))
        unpacked = tmp_path / "mar"
        mar.extract("manifest.py", unpacked)
    assert hashlib.sha256(onnx_bytes).hexdigest() == m.artifact.sha256
    assert packed == m, f"{name}.mar is stale: rebuild it with gan-train mar model_store/{name}"
    contract = _load_contract(str(unpacked))
    assert contract.__file__ == str(unpacked / "manifest.py")
    bundled = contract.Manifest.load(version_dir)
    seeds = [0, 1, 2**31, MAX_SEED]
    for psi in (None, 0.5):
        assert np.array_equal(
            contract.model_latents(bundled, seeds, psi), model_latents(m, seeds, psi)
        )


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_evaluation(name: str) -> None:
    """The figures the manifest records are consistent; the targets are checked where the
    model claims to meet them (a shortfall is recorded, and documented, not hidden)."""
    _, m = _newest(name)
    ev = m.evaluation
    assert 0 < ev["frechet_distance_real_floor"] <= ev["frechet_distance"]
    assert ev["inception_score_ratio"] == pytest.approx(
        ev["inception_score"] / ev["inception_score_real"], abs=1e-3
    )
    if m.conditional:
        assert ev["cas_ratio"] == pytest.approx(
            ev["cas"] / ev["cas_real_trained_accuracy"], abs=1e-3
        )
        meets = (
            ev["conditional_accuracy"] >= TARGET_CONDITIONAL_ACCURACY
            and ev["cas_ratio"] >= TARGET_CAS_RATIO
        )
        assert ev["cas_train_samples"] == 4000 and ev["conditional_accuracy_samples"] >= 1000
        assert len(ev["fgsm"]["epsilons"]) == len(ev["fgsm"]["cas_classifier_accuracy"])
    else:
        meets = ev["inception_score_ratio"] >= TARGET_IS_RATIO
    assert ev["meets_targets"] is meets
    assert meets is (name in MEETS_TARGETS)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_figures_hold_on_a_fresh_sample(name: str) -> None:
    version_dir, m = _newest(name)
    assert FRESH_SEED_BASE > SAMPLE_SEED_BASE + 5000
    runner = GeneratorRunner(version_dir)
    seeds = FRESH_SEED_BASE + np.arange(FRESH_SAMPLES)
    labels = balanced_labels(FRESH_SAMPLES, 10) if m.conditional else None
    images = to_tanh_tensor(runner.generate(seeds, labels))
    reference = load_reference_classifier(m.image_size)
    assert reference.heldout_accuracy >= 0.95
    if m.conditional:
        accuracy = float((predict(reference.model, images) == labels).mean())
        assert accuracy == pytest.approx(m.evaluation["conditional_accuracy"], abs=0.03)
    score, _ = inception_score(probabilities(reference.model, images[:1000]))
    assert score == pytest.approx(m.evaluation["inception_score"], rel=0.1)


@pytest.mark.slow
def test_the_service_lists_and_answers_every_shipped_model() -> None:
    with ServiceProcess(STORE) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        for name in SHIPPED:
            _, m = _newest(name)
            assert listed[name]["family"] == m.family and listed[name]["paper"] == m.paper
            params = {"seed": 7, "label": 3} if m.conditional else {"seed": 7}
            r = client.get(f"/v1/models/{name}/generate", params=params)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", name
            digit = np.asarray(Image.open(io.BytesIO(r.content)))
            assert digit.shape == (32, 32)
            # a digit: mostly dark background with some bright strokes
            assert (digit < 64).mean() > 0.5 and (digit > 192).mean() > 0.03, name
            body = {"seed": 0, "n": 10, "format": "npy"}
            if m.conditional:
                body["labels"] = list(range(10))
            answer = client.post(f"/v1/models/{name}/generate", json=body)
            images = np.load(io.BytesIO(answer.content))
            assert images.shape == (10, 32, 32, 1)
            assert len({img.tobytes() for img in images}) == 10
