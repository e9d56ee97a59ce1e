"""GanDataset: streams from the live service, disjoint seeds per DataLoader worker, correct
and balanced labels, and mixing with a real dataset."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ganclient.dataset import GanDataset, label_for_seed, worker_slice
from ganclient.local import LocalGenerator


def collect(dataset: GanDataset, workers: int) -> tuple[torch.Tensor, list[int], list[int]]:
    loader = DataLoader(dataset, batch_size=4, num_workers=workers)
    images, labels, seeds = [], [], []
    for image, label, seed in loader:
        images.append(image)
        labels += label.tolist()
        seeds += seed.tolist()
    return torch.cat(images), labels, seeds


def test_worker_slices_cover_the_range_once():
    for total, workers in [(30, 2), (7, 3), (2, 4)]:
        parts = [worker_slice(total, w, workers) for w in range(workers)]
        assert sorted(i for p in parts for i in p) == list(range(total))


def test_two_workers_stream_disjoint_seeds_with_correct_balanced_labels(service, tiny_store):
    dataset = GanDataset(
        service.url, "tiny", num_samples=30, base_seed=500, chunk_size=8, return_seed=True
    )
    images, labels, seeds = collect(dataset, workers=2)
    assert len(seeds) == len(set(seeds)) == 30
    assert sorted(seeds) == list(range(500, 530))
    assert Counter(labels) == {c: 3 for c in range(10)}
    assert images.shape == (30, 1, 8, 8) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # each image is the model's output for its (seed, label)
    local = LocalGenerator(tiny_store, "tiny")
    expected = local.generate_seeds(seeds, np.array(labels))
    got = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(got, expected)


def test_unbalanced_labels_follow_the_seed_and_class_subset(service):
    dataset = GanDataset(
        service.url,
        "tiny",
        num_samples=24,
        base_seed=7,
        balance=False,
        classes=[2, 5],
        return_seed=True,
    )
    _, labels_2w, seeds_2w = collect(dataset, workers=2)
    _, labels_1w, seeds_1w = collect(dataset, workers=0)
    assert set(labels_2w) <= {2, 5} and len(set(labels_2w)) == 2
    assert dict(zip(seeds_2w, labels_2w, strict=True)) == dict(
        zip(seeds_1w, labels_1w, strict=True)
    )
    assert all(
        label_for_seed(s, 0, [2, 5], False) == y for s, y in zip(seeds_1w, labels_1w, strict=True)
    )


def test_mix_ratio_interleaves_real_samples(service):
    real = TensorDataset(torch.zeros(20, 1, 8, 8), torch.full((20,), 99))
    dataset = GanDataset(
        service.url,
        "tiny",
        num_samples=40,
        real_dataset=real,
        mix_ratio=0.5,
        return_seed=True,
    )
    images, labels, seeds = collect(dataset, workers=2)
    real_idx = [i for i, s in enumerate(seeds) if s == -1]
    fake_idx = [i for i, s in enumerate(seeds) if s != -1]
    assert sorted(seeds[i] for i in fake_idx) == list(range(40))
    assert all(labels[i] == 99 for i in real_idx) and all(labels[i] < 10 for i in fake_idx)
    assert 0.25 < len(real_idx) / len(seeds) < 0.75
    assert float(images[real_idx].abs().sum()) == 0.0


def test_local_source_yields_the_same_stream(service, tiny_store):
    kwargs = {"num_samples": 10, "base_seed": 42, "return_seed": True}
    remote = collect(GanDataset(service.url, "tiny", **kwargs), workers=0)
    local = collect(GanDataset(None, "tiny", local=tiny_store, **kwargs), workers=0)
    assert torch.equal(remote[0], local[0]) and remote[1:] == local[1:]


def test_truncation_reaches_the_images(service, tiny_store):
    kwargs = {"num_samples": 8, "base_seed": 5, "return_seed": True}
    half = collect(GanDataset(service.url, "tiny", truncation=0.5, **kwargs), workers=0)
    local = collect(GanDataset(None, "tiny", local=tiny_store, truncation=0.5, **kwargs), 0)
    full = collect(GanDataset(service.url, "tiny", **kwargs), workers=0)
    assert torch.equal(half[0], local[0]) and not torch.equal(half[0], full[0])
    gen = LocalGenerator(tiny_store, "tiny")
    expected = gen.generate_seeds(half[2], np.array(half[1]), truncation=0.5)
    assert torch.equal(half[0], torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255)
    with pytest.raises(ValueError, match="truncation must be"):
        GanDataset(service.url, "tiny", truncation=1.5, num_samples=1)
