"""The reference classifier: a small CNN that judges generated digits.

It is trained on the 4,000 real training digits only; its accuracy on the 1,000 held-out
digits is the real-data anchor for every evaluation figure. Its penultimate layer is the
feature space of the Fréchet distance. The same architecture and recipe, trained on
generated digits instead, gives the Classification Accuracy Score (CAS).

Training is deterministic for a fixed seed whatever the caller's thread count: it runs on
``cfg.threads`` torch threads (the order of float reductions, hence the weights, depends on the
thread count). The trained reference is cached under ``runs/`` keyed by a hash of its recipe
and its data, so repeated evaluations skip it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CACHE_DIR = Path(os.environ.get("GAN_SERVE_RUNS_DIR", "runs")) / "reference-classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training recipe; every field goes into the cache key."""

    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    width: int = 32  # channels of the first conv block; the second has twice as many
    feature_dim: int = 128  # size of the penultimate layer (the Fréchet feature space)
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 2  # random translation augmentation, in pixels
    seed: int = 0
    threads: int = 1  # torch intra-op threads while training; the weights depend on it

    def key(self, data_fingerprint: str) -> str:
        blob = json.dumps({"config": asdict(self), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DigitClassifier(nn.Module):
    """image [N, C, S, S] in [-1, 1] -> class logits [N, K]; ``features`` gives [N, F]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w, s = cfg.width, cfg.image_size
        self.body = nn.Sequential(
            # C x S x S
            nn.Conv2d(cfg.channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # w x S/2 x S/2
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # 2w x S/4 x S/4
            nn.Flatten(),
            nn.Linear(2 * w * (s // 4) ** 2, cfg.feature_dim),
            nn.ReLU(inplace=True),
            # feature_dim
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(cfg.feature_dim, cfg.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # N x feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # N x num_classes


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with background (-1)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ClassifierConfig,
    on_epoch: Callable[[int], None] | None = None,
) -> DigitClassifier:
    """Train a fresh :class:`DigitClassifier` on images [N, C, S, S] in [-1, 1], bitwise the
    same for the same inputs on any machine thread count; ``on_epoch(k)`` after epoch k."""
    with torch_threads(cfg.threads):
        return _train_classifier(images, labels, cfg, on_epoch)


def _train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ClassifierConfig,
    on_epoch: Callable[[int], None] | None,
) -> DigitClassifier:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DigitClassifier(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = (len(images) + cfg.batch_size - 1) // cfg.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr * 3, total_steps=cfg.epochs * steps_per_epoch
    )
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = _random_shift(images[idx], cfg.max_shift, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return model.eval()


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """Predicted class per image, int64 [N]."""
    model.eval()
    out = [model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def probabilities(model: DigitClassifier, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """Class probabilities p(y|x), float64 [N, K]."""
    model.eval()
    out = [model(images[i : i + batch]).softmax(1) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def fgsm(
    model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Fast gradient sign adversarial images (Goodfellow et al., 2015): one step of size
    ``epsilon`` on the [0, 1] pixel scale (2 * epsilon in the [-1, 1] range) along the sign of
    the loss gradient, clipped to the valid range."""
    model.eval()
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return (images + 2.0 * epsilon * grad.sign()).clamp(-1.0, 1.0).detach()


def fgsm_accuracy(
    model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> float:
    """Accuracy on FGSM images made against this very model (white box)."""
    if epsilon == 0:
        return accuracy(model, images, labels)
    return accuracy(model, fgsm(model, images, labels, epsilon), labels)


@torch.no_grad()
def features(model: DigitClassifier, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """Penultimate-layer features, float64 [N, feature_dim]."""
    model.eval()
    out = [model.features(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels.numpy()).mean())


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class ReferenceClassifier:
    """The trained reference model and its held-out accuracy (the real-data anchor)."""

    model: DigitClassifier
    config: ClassifierConfig
    heldout_accuracy: float
    cache_path: Path | None = None
    from_cache: bool = False


def load_reference_classifier(
    image_size: int = 32,
    *,
    cfg: ClassifierConfig | None = None,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    on_epoch: Callable[[int], None] | None = None,
) -> ReferenceClassifier:
    """Train (or load from the cache) the classifier for the embedded MNIST digits."""
    from training.data import load_embedded_mnist

    cfg = cfg or ClassifierConfig(image_size=image_size)
    train, heldout = load_embedded_mnist(image_size=cfg.image_size)
    key = cfg.key(fingerprint(train.images, train.labels))
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitClassifier(cfg)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return ReferenceClassifier(model, cfg, float(saved["heldout_accuracy"]), path, True)
    model = train_classifier(train.images, train.labels, cfg, on_epoch)
    acc = accuracy(model, heldout.images, heldout.labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict(), "heldout_accuracy": acc}, tmp)
        os.replace(tmp, path)
    return ReferenceClassifier(model, cfg, acc, path, False)
