"""Captions measured from pixels, and the StackGAN export: graph, vocabulary, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from service.manifest import TEXT_TO_IMAGE, Manifest, latents_from_seeds
from service.text import load_vocabulary
from training.captions import THRESHOLDS, attribute_words, captions_for, phrasings, vocabulary
from training.data import load_embedded_mnist
from training.families.stackgan import StackGANConfig, StackGenerator, joint_embedding_loss
from training.stackgan_train import (
    StackTrainConfig,
    captioned,
    export_stackgan,
    mismatched,
    pretrain_text_encoder,
    train,
)


def stroke(width: int, lean: float) -> np.ndarray:
    """A 32x32 vertical stroke ``width`` pixels wide, leaning ``lean`` pixels per row."""
    image = np.zeros((32, 32))
    for row in range(6, 26):
        left = int(round(16 + lean * (16 - row)))
        image[row, left : left + width] = 1.0
    return image


def test_attributes_follow_the_pixels() -> None:
    thin_upright, thick_slanted = attribute_words(np.stack([stroke(1, 0.0), stroke(5, 0.5)]))
    assert thin_upright["thickness"] == "thin" and thin_upright["slant"] == "upright"
    assert thick_slanted["thickness"] == "thick" and thick_slanted["slant"] == "slanted"
    assert thin_upright["width"] == "narrow"


def test_captions_are_deterministic_and_in_the_vocabulary() -> None:
    images = np.stack([stroke(1, 0.0), stroke(5, 0.5), stroke(3, 0.2)])
    first = captions_for(images, np.array([1, 7, 4]))
    assert first == captions_for(images, np.array([1, 7, 4]))
    assert first[1][0] == "a thick slanted narrow seven" and len(first[1]) == 5
    vocab = vocabulary()
    for options in first:
        assert len(set(options)) == len(options) >= 2
        vocab.encode_many(options)  # every word known, none too long
    words = {w for t in THRESHOLDS for w in (t.low_word, t.high_word)}
    assert words <= set(vocab.known_words())
    assert phrasings(0, {"thickness": None, "slant": None, "width": None}) == [
        "a zero",
        "the digit zero",
    ]


def test_mismatched_captions_are_false_of_the_image() -> None:
    labels = torch.tensor([3, 3, 3, 5, 5, 1, 1, 1])
    sides = torch.zeros(8, 3, dtype=torch.int64)
    sides[0, 0], sides[1, 0] = 1, -1  # a thick three and a thin three
    for seed in range(5):
        wrong = mismatched(labels, sides, torch.Generator().manual_seed(seed))
        false = (labels[wrong] != labels) | (sides[wrong] * sides == -1).any(1)
        assert false.all() and (wrong != torch.arange(8)).all()
    # A thick three's only false caption of its digit is the thin three's.
    same_digit = torch.tensor([3, 3, 3])
    wrong = mismatched(same_digit, sides[:3], torch.Generator().manual_seed(0))
    assert wrong[:2].tolist() == [1, 0]


def test_export_is_a_text_to_image_model(tmp_path: Path) -> None:
    cfg = StackTrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=8, pretrain_steps=2)
    generator, info = train(cfg)
    assert info["steps"] == 2
    version_dir = export_stackgan(generator, tmp_path / "store", "captions", info)
    manifest = Manifest.load(version_dir)
    manifest.verify_artifact(version_dir)
    assert manifest.kind == TEXT_TO_IMAGE and manifest.text is not None
    assert [s.name for s in manifest.inputs] == ["z", "tokens"]
    assert manifest.training["export"]["parity_max_abs_diff"] <= 1
    vocab = load_vocabulary(version_dir, manifest.side_files[0].sha256)
    tokens = np.stack([vocab.encode("a thick seven"), vocab.encode("a thin one")])
    session = ort.InferenceSession(str(version_dir / "generator.onnx"))
    z = latents_from_seeds([0, 0], manifest.nz)
    images = session.run(None, {"z": z, "tokens": tokens})[0]
    assert images.shape == (2, 32, 32, 1) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[1])  # the caption reaches the image


def test_padding_does_not_change_the_caption() -> None:
    torch.manual_seed(0)
    g = StackGenerator(StackGANConfig(vocab_size=6, max_tokens=4)).eval()
    z = torch.randn(1, g.cfg.nz)
    short = g(torch.tensor([[1, 2, 0, 0]]), z)["high"]
    assert torch.equal(short, g(torch.tensor([[1, 2, 0, 0]]), z)["high"])
    assert not torch.equal(short, g(torch.tensor([[1, 3, 0, 0]]), z)["high"])


def test_attribute_agreement_reads_the_caption_words() -> None:
    from training.text_eval import agreement, caption_words

    assert caption_words("a thick slanted seven") == {"thickness": "thick", "slant": "slanted"}
    images = (np.stack([stroke(5, 0.5), stroke(1, 0.0)]) * 255).astype(np.uint8)[..., None]
    right = agreement(images, ["a thick slanted one", "a thin upright one"])
    wrong = agreement(images, ["a thin upright one", "a thick one"])
    assert right["thickness"]["agree"] == 1.0 and right["slant"]["agree"] == 1.0
    assert wrong["thickness"]["agree"] == 0.0 and wrong["slant"]["captions"] == 1
    assert wrong["slant"]["agree"] == 0.0


def test_pretrained_text_encoder_matches_captions_to_images_and_is_frozen() -> None:
    torch.manual_seed(0)
    vocab = vocabulary()
    train_split, _ = load_embedded_mnist(32)
    data = captioned(train_split, vocab)
    cfg = StackGANConfig(vocab_size=vocab.size, max_tokens=vocab.max_tokens)
    g = StackGenerator(cfg)
    gen = torch.Generator().manual_seed(0)
    before = pretrain_text_encoder(g.text, cfg, data, StackTrainConfig(pretrain_steps=0), gen)
    after = pretrain_text_encoder(g.text, cfg, data, StackTrainConfig(pretrain_steps=60), gen)
    assert after["digit_nearest_centre"] > max(0.8, before["digit_nearest_centre"])
    assert not any(p.requires_grad for p in g.text.parameters())
    text = g.text(torch.stack([t[0] for t in data.tokens[:8]]))
    assert torch.allclose(text.norm(dim=1), torch.full((8,), cfg.text_dim**0.5))
    same = joint_embedding_loss(text, text, torch.arange(8))
    assert same < joint_embedding_loss(text, text.roll(1, 0), torch.arange(8))
