"""uint8 [n, H, W, C] images -> response bodies: PNG, a PNG grid, .npy, base64 PNGs.

PNG uses Pillow with a low zlib level (default 1): for small generated images level 1 is
several times faster than Pillow's default 6 for files only slightly larger (docs/SERVICE.md).
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG bytes; deterministic for the same pixels."""
    pixels = image[:, :, 0] if image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [n, H, W, C] -> one uint8 [rows*(H+p)+p, cols*(W+p)+p, C] tiling, row-major."""
    n, h, w, c = images.shape
    cols = max(1, min(columns or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        out[y : y + h, x : x + w] = images[i]
    return out


def grid_png(images: np.ndarray, columns: int | None = None, compress_level: int = 1) -> bytes:
    return png_bytes(grid(images, columns), compress_level)


def npy_bytes(images: np.ndarray) -> bytes:
    """uint8 [n, H, W, C] -> the .npy file format (np.load reads it back)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    return buf.getvalue()


def base64_pngs(images: np.ndarray, compress_level: int = 1) -> list[str]:
    return [base64.b64encode(png_bytes(img, compress_level)).decode("ascii") for img in images]
