"""``gan-train evaluate`` for text-to-image models: scores on held-out captions.

Everything runs through the exported ONNX graph, with captions tokenised by the shipped
vocabulary file, as the service does. Each held-out digit gives one caption (its phrasings
in turn); image i is drawn from seed ``SAMPLE_SEED_BASE + i``.

- **digit read**: the reference classifier (trained on real digits) reads the caption's
  digit in the generated image (target: at least 90%).
- **attribute agreement**: for each attribute a caption names (thick/thin, slanted/upright,
  wide/narrow), the share of generated images measured on the caption's side of the
  threshold gap's midpoint (target: at least 80% each), beside the same share for the
  held-out real images the captions were made from (100% by construction: the ceiling), and
  the strict share (measured outside the gap, on the caption's word).
- ``targets_met``: which of these targets the figures meet.
- **diversity**: for each digit's most frequent held-out caption, the mean pairwise distance
  between generated images of that caption (different seeds) in the classifier's feature
  space, beside the same for the real held-out images with that caption; a ratio near 1 means
  no collapse to one image per caption.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from service.manifest import IMAGE_OUTPUT, LATENT_INPUT, TOKENS_INPUT, Manifest, model_latents
from service.text import Vocabulary, load_vocabulary
from training.captions import DIGIT_WORDS, THRESHOLDS, captions_for, measure
from training.classifier import features, load_reference_classifier, predict, torch_threads
from training.data import load_embedded_mnist

SAMPLE_SEED_BASE = 1_000_000
DIGIT_TARGET = 0.90
ATTRIBUTE_TARGET = 0.80
DIVERSITY_IMAGES = 40  # generated images per caption
REPORT_FILE = "report.md"
SHEET_FILE = "samples.png"


class OnnxTextGenerator:
    """The exported graph on ONNX Runtime (one thread): captions + seeds -> uint8 images."""

    def __init__(self, version_dir: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        manifest.verify_artifact(version_dir)
        assert manifest.text is not None
        side = {s.file: s.sha256 for s in manifest.side_files}
        self.vocab: Vocabulary = load_vocabulary(version_dir, side[manifest.text.vocabulary])
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(manifest.onnx_path(version_dir)), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, captions: list[str], seeds: np.ndarray, batch: int = 250) -> np.ndarray:
        out = []
        for start in range(0, len(captions), batch):
            tokens = self.vocab.encode_many(captions[start : start + batch])
            z = model_latents(self.manifest, seeds[start : start + batch])
            out.append(self.session.run([IMAGE_OUTPUT], {LATENT_INPUT: z, TOKENS_INPUT: tokens})[0])
        return np.concatenate(out)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 1] -> float [N, S, S] in [0, 1]."""
    return images[..., 0].astype(np.float64) / 255.0


def to_tanh(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images[..., 0].astype(np.float32) / 127.5 - 1.0)[:, None]


def caption_words(caption: str) -> dict[str, str]:
    """The attribute words a caption names, by measure."""
    words = set(caption.split())
    named = {}
    for t in THRESHOLDS:
        for word in (t.low_word, t.high_word):
            if word in words:
                named[t.measure] = word
    return named


def agreement(images: np.ndarray, captions: list[str]) -> dict[str, dict[str, float]]:
    """Per attribute: share on the caption's side of the gap midpoint, and strictly its word."""
    measured = measure(to_unit(images))
    out = {}
    for t in THRESHOLDS:
        side, strict = [], []
        for i, caption in enumerate(captions):
            word = caption_words(caption).get(t.measure)
            if word is None:
                continue
            value = float(measured[t.measure][i])
            high = value >= (t.low + t.high) / 2
            side.append(high == (word == t.high_word))
            strict.append(t.word(value) == word)
        out[t.measure] = {
            "captions": len(side),
            "agree": float(np.mean(side)) if side else float("nan"),
            "strict": float(np.mean(strict)) if strict else float("nan"),
        }
    return out


def mean_pairwise(feats: np.ndarray) -> float:
    diff = feats[:, None, :] - feats[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    n = len(feats)
    return float(dist.sum() / (n * (n - 1)))


def sheet(generate: OnnxTextGenerator, captions: list[str], columns: int = 8) -> Image.Image:
    """One row per caption: the caption, then ``columns`` images of it (seeds 0..columns-1)."""
    scale, text_width, size = 2, 230, generate.manifest.image_size
    cell = size * scale
    canvas = Image.new("L", (text_width + columns * cell, len(captions) * cell), 255)
    draw = ImageDraw.Draw(canvas)
    for row, caption in enumerate(captions):
        images = generate([caption] * columns, np.arange(columns))
        draw.text((4, row * cell + cell // 2 - 6), caption, fill=0)
        for col, image in enumerate(images):
            tile = Image.fromarray(image[..., 0]).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (text_width + col * cell, row * cell))
    return canvas


def evaluate_text_model(version_dir: Path, *, write: bool = False) -> dict[str, Any]:
    manifest = Manifest.load(version_dir)
    generate = OnnxTextGenerator(version_dir, manifest)
    with torch_threads(1):
        reference = load_reference_classifier(manifest.image_size)
        _, heldout = load_embedded_mnist(manifest.image_size)
        real = ((heldout.images[:, 0].numpy() + 1.0) * 127.5).round().astype(np.uint8)[..., None]
        options = captions_for(to_unit(real), heldout.labels.numpy())
        captions = [opts[i % len(opts)] for i, opts in enumerate(options)]
        digits = heldout.labels.numpy()
        seeds = SAMPLE_SEED_BASE + np.arange(len(captions))
        fake = generate(captions, seeds)
        read = predict(reference.model, to_tanh(fake))
        real_read = predict(reference.model, to_tanh(real))
        # Diversity: each digit's most frequent canonical caption.
        canonical = [opts[0] for opts in options]
        diversity = {}
        for digit in range(10):
            pairs = zip(canonical, digits, strict=True)
            counts = collections.Counter(c for c, d in pairs if d == digit)
            caption, count = counts.most_common(1)[0]
            real_idx = [i for i, c in enumerate(canonical) if c == caption]
            made = generate(
                [caption] * DIVERSITY_IMAGES, SAMPLE_SEED_BASE + np.arange(DIVERSITY_IMAGES)
            )
            diversity[caption] = {
                "real_images": count,
                "generated": mean_pairwise(features(reference.model, to_tanh(made))),
                "real": mean_pairwise(features(reference.model, to_tanh(real[real_idx])))
                if count > 1
                else float("nan"),
            }
    ratios = [v["generated"] / v["real"] for v in diversity.values() if v["real"] > 0]
    attributes = agreement(fake, captions)
    digit_read = float((read == digits).mean())
    met = {"digit_read": digit_read >= DIGIT_TARGET}
    met |= {name: a["agree"] >= ATTRIBUTE_TARGET for name, a in attributes.items()}
    result = {
        "kind": "text-to-image",
        "heldout_captions": len(captions),
        "digit_read": digit_read,
        "digit_read_real": float((real_read == digits).mean()),
        "digit_read_target": DIGIT_TARGET,
        "attributes": attributes,
        "attributes_real": agreement(real, captions),
        "attribute_target": ATTRIBUTE_TARGET,
        "targets_met": met,
        "diversity": diversity,
        "diversity_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
        "reference_classifier_heldout_accuracy": reference.heldout_accuracy,
    }
    if write:
        manifest.evaluation = json.loads(json.dumps(result))
        manifest.save(version_dir)
        shown = [f"a thick {d}" for d in DIGIT_WORDS[:3]] + [
            "a thin slanted seven",
            "a thick upright seven",
            "the digit four",
            "a wide zero",
            "a narrow zero",
            "a thin upright one",
            "a thick slanted one",
        ]
        sheet(generate, shown).save(version_dir / SHEET_FILE)
    return result
