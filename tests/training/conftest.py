"""Shared fixtures for the training tests: tiny configurations that train in a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import ImageData, load_embedded_mnist
from training.loop import TrainConfig


@pytest.fixture(scope="session")
def tiny_mnist() -> ImageData:
    """400 embedded training digits (40 per class) at 16 x 16."""
    train, _ = load_embedded_mnist(image_size=16)
    keep = slice(None, None, 10)
    return ImageData(train.images[keep].clone(), train.labels[keep].clone(), train.class_names)


def tiny_config(out_dir: Path, **overrides: object) -> TrainConfig:
    """A config small enough for tests: 16 x 16 images, width 8, 3 steps per epoch."""
    values: dict[str, object] = {
        "out_dir": str(out_dir),
        "image_size": 16,
        "nz": 8,
        "ngf": 8,
        "ndf": 8,
        "epochs": 1,
        "batch_size": 16,
        "steps_per_epoch": 3,
        "device": "cpu",
        "progress": False,
        "seed": 7,
        "threads": 1,  # tiny ops: a second thread only adds sync overhead
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def make_config():
    """Factory fixture: ``make_config(out_dir, **overrides) -> TrainConfig``."""
    return tiny_config
