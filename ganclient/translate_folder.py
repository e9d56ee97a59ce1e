"""``gan-sample --translate DIR``: every PNG/JPEG of a folder through an image-to-image model.

Each ``DIR/<relative path>.<ext>`` becomes ``OUT/<relative path>.png`` (sub-folders kept, so
an ImageFolder tree stays one), in sorted order, ``chunk_size`` images per request. Files
already in ``OUT`` are skipped, so a rerun finishes an interrupted one; each file is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files under ``folder``, sorted, hidden ones left out."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise FileNotFoundError(f"{folder} holds no .png/.jpg/.jpeg files")
    return files


def translate_folder(
    client: Any, folder: str | Path, out: str | Path, direction: str, chunk_size: int
) -> tuple[int, int]:
    """Translate the folder with ``client.translate``; -> (written, skipped)."""
    from ganclient.sample import atomic_write, png_bytes

    folder, out = Path(folder), Path(out)
    files = image_files(folder)
    targets = [out / f.relative_to(folder).with_suffix(".png") for f in files]
    todo = [i for i, t in enumerate(targets) if not t.exists()]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        images: np.ndarray = client.translate([files[i] for i in chunk], direction)
        for i, image in zip(chunk, images, strict=True):
            targets[i].parent.mkdir(parents=True, exist_ok=True)
            data = png_bytes(image)
            atomic_write(targets[i], lambda path, data=data: path.write_bytes(data))
    return len(todo), len(files) - len(todo)
