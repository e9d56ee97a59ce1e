"""Images sent to an image-to-image model: PNG or JPEG bytes -> uint8 [S, S, C], safely.

Decoding is bounded before it starts: the format is read from the first bytes (PNG or JPEG
only, else 415), then Pillow reads the header alone and the pixel count it declares is
checked against ``max_input_pixels`` (413) before a single pixel is decompressed, so a small
file declaring a huge image (a decompression bomb) costs nothing. A file that fails to decode
is a 422 naming the problem.

Conversion is the training loader's (:mod:`training.data`, image folders): to the model's
mode (``L`` for one channel, ``RGB`` for three; a transparent image is put on black first,
the background of the digit domains), the shorter side scaled to the model's size (bicubic)
and the centre square cut. An image already of the model's size and mode is left as is.
Arrays sent as JSON go through the same conversion.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ServiceError, bad_input

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
DATA_URL = re.compile(r"^data:(image/(?:png|jpeg));base64,(.*)$", re.DOTALL)


def sniff(data: bytes, field: str) -> str:
    """The format of ``data`` from its first bytes: ``PNG`` or ``JPEG``, else 415."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if not data:
        raise bad_input(field, "the image is empty")
    raise ServiceError(
        "unsupported_media_type",
        "the image is neither PNG nor JPEG (by its first bytes); send a PNG or JPEG",
        field,
    )


def decode(data: bytes, size: int, channels: int, max_pixels: int, field: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [size, size, channels], converted as training did."""
    kind = sniff(data, field)
    too_large = ServiceError(
        "image_too_large", f"the image has more than {max_pixels} pixels", field
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > max_pixels:
                raise ServiceError(
                    "image_too_large",
                    f"the image is {width}x{height} = {width * height} pixels; "
                    f"at most {max_pixels} are accepted",
                    field,
                )
            image.load()
    except ServiceError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, hit while reading the header
        raise too_large from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Warning) as exc:
        raise ServiceError(
            "broken_image", f"the {kind} image cannot be decoded: {exc}", field
        ) from None
    return convert(image, size, channels)


def convert(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Any Pillow image -> uint8 [size, size, channels]: mode, then scale and centre crop."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        w, h = image.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)


def from_array(value: object, size: int, channels: int, max_pixels: int, field: str) -> np.ndarray:
    """A nested list of integers 0-255, [H, W] or [H, W, C] (C 1, 3 or 4) -> converted image."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise bad_input(field, "an image array must be a rectangular nested list") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        shape = list(array.shape)
        raise bad_input(field, f"an image array must be [H, W] or [H, W, C], C 1/3/4; got {shape}")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ServiceError(
            "image_too_large", f"the image array has more than {max_pixels} pixels", field
        )
    if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        raise bad_input(field, "an image array must hold integers 0-255")
    pixels = array.astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    return convert(image, size, channels)


def from_data_url(text: str, size: int, channels: int, max_pixels: int, field: str) -> np.ndarray:
    match = DATA_URL.match(text)
    if match is None:
        raise bad_input(field, "an image string must be a data URL: data:image/png;base64,...")
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(field, "the data URL's base64 is invalid") from None
    return decode(data, size, channels, max_pixels, field)


def multipart_files(content_type: str, body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """A ``multipart/form-data`` body -> (file parts' bytes, in order; plain fields)."""
    if "boundary=" not in content_type:
        raise bad_input("body", "multipart/form-data needs a boundary parameter")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise bad_input("body", "the multipart body could not be parsed")
    files: list[bytes] = []
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or part.get_content_type() in IMAGE_TYPES:
            files.append(payload)
        elif part.get_param("name", header="content-disposition"):
            fields[str(part.get_param("name", header="content-disposition"))] = payload.decode(
                "utf-8", "replace"
            )
    return files, fields
