"""CycleGAN checkpoint selection (``--select-every``): the validation split is set aside from
training, it scores translations as the evaluation does, and the kept step is the best one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.training.test_cyclegan import tiny_pair, tiny_run_config
from training.cyclegan_select import BEST_CHECKPOINT, carve_validation
from training.cyclegan_train import CycleTrainConfig, load_cyclegan, train_cyclegan
from training.data import DatasetError, ImageData


class _Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class _Constant(nn.Module):
    """Every input becomes one fixed image."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image.expand(len(x), *self.image.shape)


class _FixedTranslator(nn.Module):
    """Stands in for a CycleGAN: the two generators alone."""

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module) -> None:
        super().__init__()
        self.g_ab, self.g_ba = g_ab, g_ba


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images}


def test_validation_images_are_set_aside_per_class() -> None:
    pair = tiny_pair(n=80)
    trained, validation = carve_validation(pair, per_class=5)
    for before, after, held in (
        (pair.train_a, trained.train_a, validation.a),
        (pair.train_b, trained.train_b, validation.b),
    ):
        assert len(after) == len(before) - 10 and len(held) == 10
        assert torch.bincount(held.labels).tolist() == [5, 5]
        assert not _rows(after.images) & _rows(held.images)  # never trained on
        assert _rows(after.images) | _rows(held.images) == _rows(before.images)
    assert trained.heldout_a is pair.heldout_a and trained.heldout_b is pair.heldout_b


def test_validation_scores_read_translations_as_the_evaluation_does() -> None:
    """Inversion maps each toy domain onto the other, so every shape is kept; a translator
    that draws one class whatever it reads keeps the digit of that class's share alone."""
    _, validation = carve_validation(tiny_pair(n=80), per_class=5)
    inverted = validation.score(_FixedTranslator(_Negate(), _Negate()))
    assert inverted == {"val_kept_ab": 1.0, "val_kept_ba": 1.0}
    vertical_b = validation.b.images[validation.b.labels == 0][0]
    horizontal_a = validation.a.images[validation.a.labels == 1][0]
    constant = validation.score(_FixedTranslator(_Constant(vertical_b), _Constant(horizontal_a)))
    assert constant == {"val_kept_ab": 0.5, "val_kept_ba": 0.5}


def test_selection_refuses_what_it_cannot_score() -> None:
    with pytest.raises(DatasetError, match="--validation-per-class"):
        carve_validation(tiny_pair(n=40), per_class=10)  # 10 images per class in training
    pair = tiny_pair(n=40)
    unlabelled = ImageData(pair.train_b.images, pair.train_b.labels, [], "folder")
    pair.train_b, pair.heldout_b = unlabelled, unlabelled
    with pytest.raises(DatasetError, match="labelled domains"):
        carve_validation(pair, per_class=2)


@pytest.mark.slow
def test_the_kept_step_is_the_best_on_the_validation_split(tmp_path: Path) -> None:
    pair = tiny_pair(n=80, size=16)
    cfg = tiny_run_config(tmp_path / "run", steps=6, select_every=1, validation_per_class=5)
    path = train_cyclegan(cfg, pair)
    assert path.name == BEST_CHECKPOINT and (path.parent / "last.pt").is_file()
    model, ckpt = load_cyclegan(path)
    scores = ckpt["selection"]["scores"]
    assert [s["step"] for s in scores] == [4, 5, 6]  # the decay half only
    best = max(scores, key=lambda s: min(s["val_kept_ab"], s["val_kept_ba"]))
    assert ckpt["selection"]["chosen"] == best and ckpt["step"] == best["step"]
    assert [line["step"] for line in ckpt["history"]] == list(range(1, best["step"] + 1))
    # The kept weights are the ones that scored so: scoring them again gives the same.
    _, validation = carve_validation(pair, per_class=5)
    again = validation.score(model)
    assert again == {k: best[k] for k in ("val_kept_ab", "val_kept_ba")}


def test_the_weight_average_is_the_mean_of_its_snapshots() -> None:
    from training.cyclegan_train import WeightAverage

    snapshots = [{"w": torch.randn(3, 2), "b": torch.randn(2)} for _ in range(5)]
    average = WeightAverage()
    for step, state in enumerate(snapshots, start=1):
        average.add(state, step * 10)
    assert average.steps == [10, 20, 30, 40, 50]
    for key in ("w", "b"):
        expected = torch.stack([s[key] for s in snapshots]).mean(0)
        assert torch.allclose(average.weights[key], expected, atol=1e-6)
    assert not torch.equal(average.weights["w"], snapshots[-1]["w"])  # a copy, not the last


@pytest.mark.slow
def test_averaging_exports_the_mean_of_the_decay_steps(tmp_path: Path) -> None:
    from training.cyclegan_train import AVERAGE_CHECKPOINT

    cfg = tiny_run_config(tmp_path / "run", steps=6, average_every=1)
    path = train_cyclegan(cfg, tiny_pair(size=16))
    assert path.name == AVERAGE_CHECKPOINT
    _, ckpt = load_cyclegan(path)
    assert ckpt["averaging"] == {"every": 1, "steps": [4, 5, 6]}  # the decay half only
    _, last = load_cyclegan(path.parent / "last.pt")
    key = next(k for k in ckpt["model"] if k.startswith("g_ab"))
    assert not torch.equal(ckpt["model"][key], last["model"][key])
    with pytest.raises(ValueError, match="exclude each other"):
        train_cyclegan(CycleTrainConfig(select_every=1, average_every=1), tiny_pair())
