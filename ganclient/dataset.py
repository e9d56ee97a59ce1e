"""A PyTorch ``IterableDataset`` of generated images, for data augmentation.

Each epoch covers the seeds ``base_seed .. base_seed + num_samples - 1`` exactly once: the
range is cut into one contiguous slice per ``DataLoader`` worker, so workers never repeat
each other's images. Images come from a running service (:class:`GanClient`) or from the
ONNX file in-process (:class:`LocalGenerator`), created inside each worker after fork.
A text-to-image model draws from ``captions``, used in turn by position in the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ganclient.client import GanClient, ModelInfo, check_text, check_truncation

UNCONDITIONAL_LABEL = -1


def label_for_seed(seed: int, index: int, classes: Sequence[int], balance: bool) -> int:
    """Balanced: classes in turn by position in the epoch; otherwise drawn from the seed
    (so a seed's label is the same whichever worker or run produces it)."""
    if balance:
        return int(classes[index % len(classes)])
    rng = np.random.Generator(np.random.PCG64([seed, 0x1AB]))
    return int(classes[int(rng.integers(len(classes)))])


def worker_slice(total: int, worker: int, workers: int) -> range:
    """Contiguous, disjoint slices of range(total) that together cover it."""
    per, extra = divmod(total, workers)
    start = worker * per + min(worker, extra)
    return range(start, start + per + (1 if worker < extra else 0))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n,H,W,C] -> float32 [n,C,H,W] in [0, 1], like torchvision's ToTensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


class GanDataset(IterableDataset):
    """Streams ``(image, label)`` (or ``(image, label, seed)`` with ``return_seed``).

    ``image`` is float32 [C,H,W] in [0, 1] (then ``transform`` if given); ``label`` is an
    int (-1 for an unconditional model). With ``real_dataset`` and ``mix_ratio`` p, a
    fraction p of the stream (on average) is drawn from the real map-style dataset instead,
    yielded as that dataset returns it (seed -1).

    A text-to-image model needs ``captions``: item i of the epoch is drawn from caption
    ``captions[i % len(captions)]`` and streamed as ``(image, caption)``. ``truncation`` is
    psi, as the service's field (None: the model's default)."""

    def __init__(
        self,
        url: str | None = "http://127.0.0.1:8000",
        model: str = "mnist-cdcgan",
        *,
        num_samples: int,
        base_seed: int = 0,
        local: str | Path | None = None,
        balance: bool = True,
        classes: Sequence[int] | None = None,
        captions: Sequence[str] | None = None,
        truncation: float | None = None,
        real_dataset: Dataset | None = None,
        mix_ratio: float = 0.0,
        chunk_size: int = 64,
        transform: Callable[[torch.Tensor], Any] | None = None,
        return_seed: bool = False,
        client_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if not 0.0 <= mix_ratio < 1.0:
            raise ValueError("mix_ratio must be in [0, 1)")
        if mix_ratio > 0 and real_dataset is None:
            raise ValueError("mix_ratio > 0 needs a real_dataset")
        if url is None and local is None:
            raise ValueError("give a service url or a local model path")
        if captions is not None and (isinstance(captions, str) or not captions):
            raise ValueError("captions must be a non-empty list of strings")
        check_truncation(truncation)
        self.url = url
        self.model = model
        self.local = local
        self.num_samples = num_samples
        self.base_seed = base_seed
        self.balance = balance
        self.classes = None if classes is None else [int(c) for c in classes]
        self.captions = None if captions is None else [str(c) for c in captions]
        self.truncation = truncation
        self.real_dataset = real_dataset
        self.mix_ratio = mix_ratio
        self.chunk_size = chunk_size
        self.transform = transform
        self.return_seed = return_seed
        self.client_options = dict(client_options or {})

    def _source(self) -> Any:
        if self.local is not None:
            from ganclient.local import LocalGenerator

            return LocalGenerator(self.local, self.model)
        return GanClient(self.url, self.model, **self.client_options)

    def _classes(self, info: ModelInfo) -> list[int] | None:
        if not info.conditional:
            return None
        classes = self.classes if self.classes is not None else list(range(info.num_classes))
        if not classes or any(not 0 <= c < info.num_classes for c in classes):
            raise ValueError(f"classes must be within 0..{info.num_classes - 1}")
        return classes

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        worker = get_worker_info()
        wid, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        indices = worker_slice(self.num_samples, wid, workers)
        mix_rng = np.random.Generator(np.random.PCG64([self.base_seed, wid, 0x3A1]))
        with self._source() as source:
            info = source.info()
            check_text(info, self.captions)
            classes = self._classes(info)
            for start in range(indices.start, indices.stop, self.chunk_size):
                chunk = range(start, min(indices.stop, start + self.chunk_size))
                seeds = [self.base_seed + i for i in chunk]
                if self.captions is not None:
                    yield from self._captioned(source, seeds, chunk, mix_rng)
                    continue
                labels = None
                if classes is not None:
                    labels = np.array(
                        [
                            label_for_seed(s, i, classes, self.balance)
                            for s, i in zip(seeds, chunk, strict=True)
                        ],
                        dtype=np.int64,
                    )
                images = to_tensor(source.generate_seeds(seeds, labels, truncation=self.truncation))
                for k, seed in enumerate(seeds):
                    yield from self._real_items(mix_rng)
                    label = UNCONDITIONAL_LABEL if labels is None else int(labels[k])
                    image = images[k] if self.transform is None else self.transform(images[k])
                    yield (image, label, seed) if self.return_seed else (image, label)

    def _captioned(
        self, source: Any, seeds: list[int], chunk: range, mix_rng: np.random.Generator
    ) -> Iterator[tuple[Any, ...]]:
        """A text-to-image chunk: ``(image, caption)`` per seed, captions in turn."""
        assert self.captions is not None
        captions = [self.captions[i % len(self.captions)] for i in chunk]
        images = to_tensor(source.generate_seeds(seeds, None, captions, truncation=self.truncation))
        for k, seed in enumerate(seeds):
            yield from self._real_items(mix_rng)
            image = images[k] if self.transform is None else self.transform(images[k])
            yield (image, captions[k], seed) if self.return_seed else (image, captions[k])

    def _real_items(self, rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
        """Before each generated item, yield k real items with P(k) geometric, so real items
        make up ``mix_ratio`` of the stream on average."""
        if self.real_dataset is None or self.mix_ratio <= 0:
            return
        size = len(self.real_dataset)  # type: ignore[arg-type]
        while rng.random() < self.mix_ratio:
            image, label = self.real_dataset[int(rng.integers(size))][:2]
            label = label if self.captions is not None else int(label)  # a caption stays text
            yield (image, label, -1) if self.return_seed else (image, label)
