"""Evaluation: Fréchet distance maths, the reference classifier, and the full report on a
generator that only draws noise versus one that replays real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.manifest import (
    ArtifactSpec,
    Manifest,
    expected_inputs,
    expected_outputs,
    sha256_file,
    utc_now,
)
from training.classifier import (
    ClassifierConfig,
    fgsm,
    fgsm_accuracy,
    load_reference_classifier,
    train_classifier,
)
from training.data import load_embedded_mnist
from training.evaluate import (
    evaluate_generator,
    frechet_distance,
    inception_score,
    resolve_version_dir,
)
from training.export import export_random_generator
from training.model import ModelConfig

NZ = 8
PER_CLASS = 100


def _reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook formula with a general matrix square root, to cross-check the fast one."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_frechet_distance_matches_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_reference_frechet(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # A pure shift adds exactly its squared length.
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-9)


def _replay_generator(store: Path, name: str) -> Path:
    """An ONNX 'generator' that returns real training digits: image = table[label, j] with
    j = int(|z[0]| * 1000) mod PER_CLASS. It follows the graph contract exactly."""
    train, _ = load_embedded_mnist(image_size=32)
    labels = train.labels.numpy()
    pixels = ((train.images.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    table = np.stack(
        [pixels[np.flatnonzero(labels == k)[:PER_CLASS]] for k in range(10)]
    )  # 10 x PER_CLASS x 1 x 32 x 32
    table = table.reshape(10 * PER_CLASS, 1, 32, 32).transpose(0, 2, 3, 1).copy()  # N x S x S x C

    c = numpy_helper.from_array
    nodes = [
        helper.make_node("Gather", ["z", "zero"], ["z0"], axis=1),
        helper.make_node("Abs", ["z0"], ["z0_abs"]),
        helper.make_node("Mul", ["z0_abs", "thousand"], ["z0_big"]),
        helper.make_node("Cast", ["z0_big"], ["z0_int"], to=TensorProto.INT64),
        helper.make_node("Mod", ["z0_int", "per_class"], ["j"]),
        helper.make_node("Mul", ["label", "per_class"], ["base"]),
        helper.make_node("Add", ["base", "j"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["image"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "replay",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", NZ]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 32, 32, 1])],
        initializer=[
            c(np.array(0, dtype=np.int64), "zero"),
            c(np.array(1000.0, dtype=np.float32), "thousand"),
            c(np.array(PER_CLASS, dtype=np.int64), "per_class"),
            c(table, "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    version_dir = store / name / "1"
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "generator.onnx"))
    Manifest(
        name=name,
        version=1,
        created_at=utc_now(),
        nz=NZ,
        image_size=32,
        channels=1,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        inputs=expected_inputs(NZ, 10),
        outputs=expected_outputs(32, 1),
        artifact=ArtifactSpec(sha256=sha256_file(version_dir / "generator.onnx"), opset=17),
    ).save(version_dir)
    return version_dir


@pytest.mark.slow
def test_reference_classifier_anchor_is_strong():
    reference = load_reference_classifier(32)
    assert reference.heldout_accuracy >= 0.95
    again = load_reference_classifier(32)
    assert again.from_cache and again.heldout_accuracy == reference.heldout_accuracy


def test_classifier_training_ignores_the_callers_thread_count():
    train, _ = load_embedded_mnist(image_size=16)
    cfg = ClassifierConfig(image_size=16, width=8, feature_dim=16, epochs=1)
    images, labels = train.images[::20], train.labels[::20]
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            weights.append(train_classifier(images, labels, cfg).state_dict())
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


@pytest.mark.slow
def test_evaluation_separates_real_digits_from_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    small = dict(samples=1000, fid_samples=500, cas_samples=500)

    noise_dir = export_random_generator(tmp_path, "noise", ModelConfig(num_classes=10, ngf=8))
    sha = Manifest.load(noise_dir).artifact.sha256
    noise = evaluate_generator(noise_dir, write=True, **small)

    replay_dir = _replay_generator(tmp_path, "replay")
    capsys.readouterr()
    replay = evaluate_generator(replay_dir, **small)
    # Unasked, evaluation writes nothing, and it reports each stage as it goes.
    assert Manifest.load(replay_dir).evaluation == {}
    assert sorted(p.name for p in replay_dir.iterdir()) == ["generator.onnx", "manifest.json"]
    progress = capsys.readouterr().err
    for stage in ("generating 1000 images", "Fréchet distance", "CAS classifier: epoch 8/8"):
        assert stage in progress

    # Real digits are recognised as the requested class; noise is not.
    assert replay["conditional_accuracy"] >= 0.95
    assert noise["conditional_accuracy"] <= 0.3
    # Real digits sit near the real-vs-real floor; noise is far from it.
    assert replay["frechet_distance"] < 3 * replay["frechet_distance_real_floor"]
    assert replay["frechet_distance"] < noise["frechet_distance"] / 10
    assert noise["frechet_distance"] > 5 * noise["frechet_distance_real_floor"]
    # A classifier trained on replayed real digits generalises; one trained on noise cannot.
    assert replay["cas"] >= 0.6 > 0.3 >= noise["cas"]
    assert noise["meets_targets"] is False
    assert noise["cas_real_trained_accuracy"] == replay["cas_real_trained_accuracy"] >= 0.95

    # The figures were written into the manifest; the graph and its checksum are untouched.
    manifest = Manifest.load(noise_dir)
    manifest.verify_artifact(noise_dir)
    assert manifest.artifact.sha256 == sha
    assert manifest.evaluation["conditional_accuracy"] == noise["conditional_accuracy"]
    report = (noise_dir / "report.md").read_text()
    assert "DOES NOT meet" in report and "real-vs-real floor" in report
    grid = Image.open(noise_dir / "samples.png")
    assert grid.size == (2 * (10 * 34 + 2), 2 * (10 * 34 + 2))  # 10 rows x 10 columns

    assert resolve_version_dir(tmp_path / "replay") == replay_dir


def test_evaluation_refuses_generators_it_cannot_judge(tmp_path: Path):
    rgb = export_random_generator(tmp_path, "rgb", ModelConfig(channels=3, ngf=8, nz=8))
    with pytest.raises(ValueError, match="1-channel"):
        evaluate_generator(rgb)
    with pytest.raises(FileNotFoundError):
        resolve_version_dir(tmp_path / "missing")


def test_inception_score_is_one_for_uninformative_and_k_for_confident_balanced_predictions():
    uniform = np.full((100, 10), 0.1)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = np.eye(10)[np.arange(100) % 10]  # each split holds every class equally
    assert inception_score(confident) == pytest.approx((10.0, 0.0), abs=1e-6)
    collapsed = np.eye(10)[np.zeros(100, dtype=int)]  # one class only: no diversity
    assert inception_score(collapsed)[0] == pytest.approx(1.0, abs=1e-6)


def test_fgsm_lowers_accuracy_and_stays_in_range():
    reference = load_reference_classifier(32)
    _, heldout = load_embedded_mnist(image_size=32)
    images, labels = heldout.images[:200], heldout.labels[:200]
    adversarial = fgsm(reference.model, images, labels, 0.1)
    assert adversarial.min() >= -1 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() <= 0.2 + 1e-6  # 2 * epsilon in [-1, 1] units
    clean = fgsm_accuracy(reference.model, images, labels, 0.0)
    attacked = fgsm_accuracy(reference.model, images, labels, 0.1)
    assert clean >= 0.95 and attacked < clean - 0.1
