"""Run an exported generator in-process with onnxruntime, with the same API as the HTTP
clients, so sampling and datasets work without a running service. A text-to-image model's
captions are tokenised here by the shipped vocabulary (``service/text.py``), as the service
does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ganclient.client import (
    ModelInfo,
    check_text,
    plan_captions,
    plan_labels,
    plan_seeds,
    to_pil,
)
from service.manifest import (
    IMAGE_OUTPUT,
    LABEL_INPUT,
    LATENT_INPUT,
    TOKENS_INPUT,
    Manifest,
    version_dirs,
)
from service.text import Vocabulary, load_vocabulary


def resolve_model_dir(path: str | Path, model: str | None = None) -> Path:
    """Accept a version dir (has manifest.json), a model dir (highest version wins), or a
    store root plus a model name."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if model is not None and (root / model).is_dir():
        root = root / model
    if (root / "manifest.json").is_file():
        return root
    versions = version_dirs(root)
    if versions:
        return versions[max(versions)]
    models = sorted(d.name for d in root.iterdir() if d.is_dir() and version_dirs(d))
    if models:
        raise FileNotFoundError(
            f"no model {model!r} in {root}; the models there are: {', '.join(models)}"
        )
    raise FileNotFoundError(f"no model version with a manifest.json under {root}")


class LocalGenerator:
    """A generator loaded from ``model_store/<name>/<version>/`` (checksum verified)."""

    def __init__(self, path: str | Path, model: str | None = None, chunk_size: int = 256):
        import onnxruntime as ort

        self.directory = resolve_model_dir(path, model)
        self.manifest = Manifest.load(self.directory)
        self.manifest.verify_artifact(self.directory)
        self.chunk_size = chunk_size
        self.vocabulary: Vocabulary | None = None
        if self.manifest.text is not None:
            sums = {side.file: side.sha256 for side in self.manifest.side_files}
            vocab_file = self.manifest.text.vocabulary
            self.vocabulary = load_vocabulary(self.directory, sums[vocab_file])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(self.manifest.onnx_path(self.directory)),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def __enter__(self) -> LocalGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release beyond the session; kept for parity with the HTTP clients."""

    def info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(
            name=m.name,
            version=str(m.version),
            nz=m.nz,
            image_size=m.image_size,
            channels=m.channels,
            num_classes=m.num_classes,
            class_names=list(m.class_names),
            kind=m.kind,
            truncation=m.truncation,
        )

    def generate_latents(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
    ) -> np.ndarray:
        """uint8 [n,H,W,C]; a text-to-image model takes one caption per latent (unknown
        words raise :class:`service.text.CaptionError`, a ValueError)."""
        check_text(self.info(), captions)
        tokens = None
        if self.vocabulary is not None and captions is not None:
            if len(captions) != len(z):
                raise ValueError(f"{len(captions)} captions for {len(z)} latents")
            tokens = self.vocabulary.encode_many(list(captions))
        parts = []
        for start in range(0, len(z), self.chunk_size):
            feed: dict[str, np.ndarray] = {
                LATENT_INPUT: np.ascontiguousarray(z[start : start + self.chunk_size], np.float32)
            }
            if tokens is not None:
                feed[TOKENS_INPUT] = tokens[start : start + self.chunk_size]
            if self.manifest.conditional:
                if labels is None:
                    raise ValueError("conditional model needs labels")
                feed[LABEL_INPUT] = np.ascontiguousarray(
                    labels[start : start + self.chunk_size], np.int64
                )
            (images,) = self._session.run([IMAGE_OUTPUT], feed)
            parts.append(images)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def generate_seeds(
        self,
        seeds: Sequence[int],
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
        *,
        truncation: float | None = None,
    ) -> np.ndarray:
        z = self.info().seed_latents(seeds, truncation)
        return self.generate_latents(z, labels, captions)

    def generate(
        self,
        n: int,
        labels: int | Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
        *,
        text: str | Sequence[str] | None = None,
        truncation: float | None = None,
        pil: bool = False,
    ) -> np.ndarray | list[Any]:
        """n images from seeds ``seed + i``; ``text``: a text-to-image model's caption for
        all images, or one per image; ``truncation``: psi (as :meth:`GanClient.generate`)."""
        seeds = plan_seeds(n, seed)
        check_text(self.info(), text)
        if text is not None:
            images = self.generate_seeds(seeds, None, plan_captions(text, n), truncation=truncation)
        else:
            planned = plan_labels(seeds, labels, self.info())
            images = self.generate_seeds(seeds, planned, truncation=truncation)
        return to_pil(images) if pil else images
