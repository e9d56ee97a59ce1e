"""Checkpoint selection for ``gan-train cyclegan --select-every N``, on a validation split.

Adversarial training does not settle: successive checkpoints of one run keep the digit a few
points more or less often (docs/TRAINING.md), so the last step is a draw among its
neighbours. With selection, ``validation_per_class`` images of every class are set aside from
each domain's *training* images (the generators never see them), a digit classifier per
domain is trained on the rest (real images only, the evaluation's recipe), and during the
learning-rate decay the run scores both directions on the set-aside images every N steps.
The step whose lower direction is best is kept as ``checkpoints/best.pt`` and exported.
The held-out sets that ``gan-train evaluate`` scores play no part in the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from training.classifier import DigitClassifier, predict
from training.data import DatasetError, ImageData, stratified_split
from training.domains import DomainPair
from training.families.cyclegan import CycleGAN
from training.translation_eval import digit_classifiers, to_pixels, to_tensor

BEST_CHECKPOINT = "best.pt"
VALIDATION_SEED = 31  # the split of each domain's training images (B uses the next seed)


@dataclass
class ValidationSet:
    """Set-aside training images of both domains and the classifiers that read their
    translations."""

    a: ImageData
    b: ImageData
    digits_a: DigitClassifier  # trained on domain A's remaining training images
    digits_b: DigitClassifier

    @torch.no_grad()
    def score(self, model: CycleGAN) -> dict[str, float]:
        """The share of digits kept by A->B and by B->A, read from uint8 images as served."""
        was_training = model.training
        model.eval()
        ab = to_tensor(to_pixels(model.g_ab(self.a.images)))
        ba = to_tensor(to_pixels(model.g_ba(self.b.images)))
        model.train(was_training)
        kept_ab = (predict(self.digits_b, ab) == self.a.labels.numpy()).mean()
        kept_ba = (predict(self.digits_a, ba) == self.b.labels.numpy()).mean()
        return {"val_kept_ab": round(float(kept_ab), 4), "val_kept_ba": round(float(kept_ba), 4)}


def _set_aside(data: ImageData, per_class: int, seed: int) -> tuple[ImageData, ImageData]:
    labels = data.labels.numpy()
    smallest = min(int((labels == k).sum()) for k in range(data.num_classes))
    if smallest <= per_class:
        raise DatasetError(
            f"checkpoint selection sets aside {per_class} images per class, but a class of "
            f"{data.source} has only {smallest}; lower --validation-per-class"
        )
    train_idx, val_idx = stratified_split(labels, per_class, seed)
    return data.subset(torch.from_numpy(train_idx)), data.subset(torch.from_numpy(val_idx))


def carve_validation(pair: DomainPair, per_class: int) -> tuple[DomainPair, ValidationSet]:
    """The pair with ``per_class`` images of every class taken out of both training sets, and
    those images with classifiers trained on the training images that remain."""
    if not pair.labelled or not pair.train_a.class_names or not pair.train_b.class_names:
        raise DatasetError(
            "checkpoint selection (--select-every) scores kept digits, so it needs labelled "
            "domains: an embedded pair, or folders with one subfolder per class"
        )
    train_a, val_a = _set_aside(pair.train_a, per_class, VALIDATION_SEED)
    train_b, val_b = _set_aside(pair.train_b, per_class, VALIDATION_SEED + 1)
    classes = len(pair.heldout_a.class_names)
    digits_a, digits_b = digit_classifiers(train_a, train_b, classes)
    return (
        replace(pair, train_a=train_a, train_b=train_b),
        ValidationSet(val_a, val_b, digits_a, digits_b),
    )
