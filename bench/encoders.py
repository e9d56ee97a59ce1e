"""Image encoders the bench times: the service's own when importable, so the ceiling and the
service pay for exactly the same code path; a plain Pillow/numpy fallback otherwise."""

from __future__ import annotations

import io

import numpy as np


def _fallback_png(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = image[:, :, 0] if image.shape[-1] == 1 else image  # H x W (x 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _fallback_npy(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    return buffer.getvalue()


try:  # the service's encoders, when they have landed
    from service.encode import npy_bytes as _service_npy
    from service.encode import png_bytes as _service_png
except ImportError:  # pragma: no cover - depends on the service version
    _service_png = None
    _service_npy = None

ENCODER_SOURCE = "service.encode" if _service_png is not None else "bench.encoders fallback"


def encode_png(image: np.ndarray) -> bytes:
    """One H x W x C uint8 image to PNG bytes."""
    if _service_png is not None:
        return _service_png(image)
    return _fallback_png(image)


def encode_npy(images: np.ndarray) -> bytes:
    """N x H x W x C uint8 images to .npy bytes."""
    if _service_npy is not None:
        return _service_npy(images)
    return _fallback_npy(images)
