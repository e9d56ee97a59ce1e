"""Captions made from the digits themselves: the label as a word and measured attributes.

Every attribute is measured on the 32x32 image (intensity in [0, 1]) from its pixels alone,
so the same rule scores generated images in ``gan-train evaluate``:

* **thickness**: ``2 * ink_area / boundary_pixels`` (ink: intensity > 0.5; a boundary pixel
  is ink with a 4-neighbour that is not). About the stroke width in pixels.
* **slant**: the shear of the intensity moments, ``-mu_xy / mu_yy`` (x right, y down):
  how far the digit leans per row; positive leans right. Its magnitude is measured.
* **width**: the standard deviation of x under the intensity, ``sqrt(mu_xx)``, in pixels.

Each attribute has two words and a gap between them (``THRESHOLDS``); a digit inside a gap
is not described by that attribute, so every word in a caption is clearly true. The
thresholds sit near the 30th and 70th percentiles of the 4,000 training digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.text import PAD_TOKEN, Vocabulary

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INK_LEVEL = 0.5


@dataclass(frozen=True)
class Threshold:
    """``low_word`` when the measure is <= low, ``high_word`` when >= high, else unsaid."""

    measure: str
    low: float
    high: float
    low_word: str
    high_word: str

    def word(self, value: float) -> str | None:
        if value <= self.low:
            return self.low_word
        if value >= self.high:
            return self.high_word
        return None


THRESHOLDS = (
    Threshold("thickness", 2.9, 3.5, "thin", "thick"),
    Threshold("slant", 0.12, 0.30, "upright", "slanted"),
    Threshold("width", 3.9, 5.0, "narrow", "wide"),
)
FRAME_WORDS = ("a", "the", "digit", "that", "is", "and", "with", "strokes")
MAX_TOKENS = 10


def vocabulary() -> Vocabulary:
    """The closed vocabulary: padding, frame words, attribute words, digit words."""
    attribute_words = [w for t in THRESHOLDS for w in (t.low_word, t.high_word)]
    return Vocabulary((PAD_TOKEN, *FRAME_WORDS, *attribute_words, *DIGIT_WORDS), MAX_TOKENS)


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image thickness, |slant| and width of float images [N, S, S] in [0, 1]."""
    x = np.asarray(images, dtype=np.float64)
    ink = x > INK_LEVEL
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    area = ink.sum((1, 2))
    boundary = (ink & ~inner).sum((1, 2))
    size = x.shape[-1]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    mass = np.maximum(x.sum((1, 2)), 1e-6)
    cx = (x * cols).sum((1, 2)) / mass
    cy = (x * rows).sum((1, 2)) / mass
    dx = cols[None] - cx[:, None, None]
    dy = rows[None] - cy[:, None, None]
    var_y = np.maximum((x * dy**2).sum((1, 2)) / mass, 1e-6)
    var_x = (x * dx**2).sum((1, 2)) / mass
    cov = (x * dx * dy).sum((1, 2)) / mass
    return {
        "thickness": 2.0 * area / np.maximum(boundary, 1),
        "slant": np.abs(-cov / var_y),
        "width": np.sqrt(var_x),
    }


def attribute_words(images: np.ndarray) -> list[dict[str, str | None]]:
    """Per image, each attribute's word (or None inside the gap)."""
    measured = measure(images)
    return [
        {t.measure: t.word(float(measured[t.measure][i])) for t in THRESHOLDS}
        for i in range(len(images))
    ]


def phrasings(digit: int, words: dict[str, str | None]) -> list[str]:
    """Several captions of one digit, all true of it; the first is the canonical one."""
    name = DIGIT_WORDS[digit]
    adjectives = [w for w in (words["thickness"], words["slant"], words["width"]) if w]
    out = [" ".join(["a", *adjectives, name]), " ".join(["the", "digit", name, *adjectives])]
    if adjectives:
        out.append(f"a {name} that is " + " and ".join(adjectives[:2]))
        out.append(" ".join([*adjectives, name]))
    if words["thickness"]:
        rest = [w for w in (words["slant"], words["width"]) if w]
        out.append(" ".join(["a", *rest, name, "with", words["thickness"], "strokes"]))
    return out


def captions_for(images: np.ndarray, labels: np.ndarray) -> list[list[str]]:
    """Every image's phrasings: images float [N, S, S] in [0, 1], labels int [N]."""
    return [
        phrasings(int(label), words)
        for label, words in zip(labels, attribute_words(images), strict=True)
    ]
