"""``gan-train evaluate`` for image-to-image models: objective scores on held-out images.

Everything runs through the exported ONNX graph (uint8 in, uint8 out), as the service does.
Classifiers are trained on real training images only, never on translations:

- **digit kept**: a digit classifier of domain B (trained on B's training images) reads the
  A->B translations of held-out A digits, and one of domain A reads B->A; the share whose
  digit is still the source's (target: at least 90%), beside each classifier's accuracy on
  real held-out images of its own domain (the ceiling) and on the source images not
  translated at all (the floor a translation has to beat);
- **domain fooled**: a two-class domain classifier (trained on both domains' training images)
  calls a translation the target domain (a real held-out image: its accuracy);
- **cycle error**: mean absolute pixel error of A->B->A and B->A->B against the source, on
  the 0-255 scale;
- **perturbed cycle error**: the same with the intermediate image perturbed before the way
  back: Gaussian noise of sigma 2 intensity levels, and a JPEG round trip at quality 90 (a
  PNG round trip is lossless for uint8 images, so it equals the clean error). A cycle error
  that grows much more than the perturbation means the translation hides the source in
  near-invisible signals (Chu et al. 2017, "CycleGAN, a master of steganography").
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.manifest import DIRECTION_INPUT, IMAGE_OUTPUT, SOURCE_INPUT, Manifest
from training.classifier import (
    DEFAULT_CACHE_DIR,
    ClassifierConfig,
    DigitClassifier,
    accuracy,
    fingerprint,
    predict,
    torch_threads,
    train_classifier,
)
from training.data import ImageData
from training.domains import MNIST_FONTS, DomainPair, load_domain_pair

DIGIT_KEPT_TARGET = 0.90
NOISE_SIGMA = 2.0  # intensity levels
JPEG_QUALITY = 90
# The digit judges train until their accuracy on a split of their own training images stops
# rising (about 20 epochs on the MNIST-M pair; the fonts pair's are level from 5). At 5, B's
# judge of the MNIST-M pair misread 8.6% of real blended digits, nearly the whole 10% the
# target allows. docs/EVALUATION.md, "Why the digit classifiers train 20 epochs".
DIGIT_CLASSIFIER_EPOCHS = 20
DOMAIN_CLASSIFIER_EPOCHS = 5  # two classes: reads real held-out images 99-100% right at 5
CACHE_DIR = DEFAULT_CACHE_DIR.parent / "translation-classifiers"
REPORT_FILE = "report.md"
SHEET_FILE = "samples.png"
SHEET_COLUMNS = 10


class OnnxTranslator:
    """The exported graph on ONNX Runtime: uint8 NHWC images both ways."""

    def __init__(self, version_dir: Path, manifest: Manifest, threads: int = 1):
        import onnxruntime as ort

        manifest.verify_artifact(version_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(manifest.onnx_path(version_dir)), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, source: np.ndarray, direction: int, batch: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(source), batch):
            part = np.ascontiguousarray(source[start : start + batch])
            dirs = np.full(len(part), direction, np.int64)
            out.append(
                self.session.run([IMAGE_OUTPUT], {SOURCE_INPUT: part, DIRECTION_INPUT: dirs})[0]
            )
        return np.concatenate(out)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[N, C, S, S] in [-1, 1] -> uint8 [N, S, S, C]."""
    pixels = torch.clamp(torch.round((images + 1.0) * 127.5), 0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, C] -> [N, C, S, S] in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def add_noise(pixels: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    noisy = pixels.astype(np.float32) + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            buffer, format="JPEG", quality=quality
        )
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out[i] = decoded.reshape(image.shape)
    return out


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def real_image_classifier(
    data: ImageData, labels: torch.Tensor, num_classes: int, seed: int, epochs: int
) -> Any:
    """A classifier trained on real images only; cached under ``runs/`` by recipe and data
    (training is deterministic, so the cache only saves time)."""
    cfg = ClassifierConfig(
        image_size=data.image_size,
        channels=data.channels,
        num_classes=num_classes,
        epochs=epochs,
        seed=seed,
    )
    path = CACHE_DIR / f"{cfg.key(fingerprint(data.images, labels))}.pt"
    if path.is_file():
        model = DigitClassifier(cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model = train_classifier(data.images, labels, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def digit_classifiers(train_a: ImageData, train_b: ImageData, num_classes: int) -> tuple[Any, Any]:
    """The judges of digit kept, one per domain, each trained on that domain's real images."""
    return (
        real_image_classifier(train_a, train_a.labels, num_classes, 1, DIGIT_CLASSIFIER_EPOCHS),
        real_image_classifier(train_b, train_b.labels, num_classes, 2, DIGIT_CLASSIFIER_EPOCHS),
    )


def score_translator(
    translate: Any, pair: DomainPair, *, log: Any = print
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The figures (see the module docstring) and the images they came from."""
    a, b = to_pixels(pair.heldout_a.images), to_pixels(pair.heldout_b.images)
    ab, ba = translate(a, 0), translate(b, 1)
    aba, bab = translate(ab, 1), translate(ba, 0)
    images = {"a": a, "ab": ab, "aba": aba, "b": b, "ba": ba, "bab": bab}
    r: dict[str, Any] = {"heldout_a": len(a), "heldout_b": len(b)}
    r["cycle_error_a"] = round(mean_abs_error(aba, a), 3)
    r["cycle_error_b"] = round(mean_abs_error(bab, b), 3)
    perturbations = {
        f"noise_sigma{NOISE_SIGMA:g}": lambda x: add_noise(x, NOISE_SIGMA),
        f"jpeg_q{JPEG_QUALITY}": lambda x: jpeg_round_trip(x, JPEG_QUALITY),
    }
    for label, perturb in perturbations.items():
        pab, pba = perturb(ab), perturb(ba)
        r[f"cycle_error_a_{label}"] = round(mean_abs_error(translate(pab, 1), a), 3)
        r[f"cycle_error_b_{label}"] = round(mean_abs_error(translate(pba, 0), b), 3)
        r[f"perturbation_size_{label}"] = round(
            (mean_abs_error(pab, ab) + mean_abs_error(pba, ba)) / 2, 3
        )
    log("training the domain classifier on real images of both domains")
    both = ImageData(
        torch.cat([pair.train_a.images, pair.train_b.images]),
        torch.zeros(len(pair.train_a) + len(pair.train_b), dtype=torch.int64),
        [],
        "both",
    )
    domain_labels = torch.cat(
        [
            torch.zeros(len(pair.train_a), dtype=torch.int64),
            torch.ones(len(pair.train_b), dtype=torch.int64),
        ]
    )
    domain = real_image_classifier(both, domain_labels, 2, seed=0, epochs=DOMAIN_CLASSIFIER_EPOCHS)
    real = torch.cat([to_tensor(a), to_tensor(b)])
    real_domain = torch.cat(
        [torch.zeros(len(a), dtype=torch.int64), torch.ones(len(b), dtype=torch.int64)]
    )
    r["domain_classifier_heldout_accuracy"] = round(accuracy(domain, real, real_domain), 4)
    r["domain_fooled_ab"] = round(float((predict(domain, to_tensor(ab)) == 1).mean()), 4)
    r["domain_fooled_ba"] = round(float((predict(domain, to_tensor(ba)) == 0).mean()), 4)
    if pair.labelled:
        k = len(pair.heldout_a.class_names)
        log("training a digit classifier per domain on its real training images")
        digits_a, digits_b = digit_classifiers(pair.train_a, pair.train_b, k)
        la, lb = pair.heldout_a.labels.numpy(), pair.heldout_b.labels.numpy()
        r["digit_classifier_a_heldout_accuracy"] = round(
            accuracy(digits_a, pair.heldout_a.images, pair.heldout_a.labels), 4
        )
        r["digit_classifier_b_heldout_accuracy"] = round(
            accuracy(digits_b, pair.heldout_b.images, pair.heldout_b.labels), 4
        )
        r["digit_kept_ab"] = round(float((predict(digits_b, to_tensor(ab)) == la).mean()), 4)
        r["digit_kept_ba"] = round(float((predict(digits_a, to_tensor(ba)) == lb).mean()), 4)
        # The floor a translation must beat: the source image itself, not translated.
        r["digit_kept_untranslated_ab"] = round(
            accuracy(digits_b, pair.heldout_a.images, pair.heldout_a.labels), 4
        )
        r["digit_kept_untranslated_ba"] = round(
            accuracy(digits_a, pair.heldout_b.images, pair.heldout_b.labels), 4
        )
        r["digit_kept_aba"] = round(float((predict(digits_a, to_tensor(aba)) == la).mean()), 4)
        r["digit_kept_bab"] = round(float((predict(digits_b, to_tensor(bab)) == lb).mean()), 4)
        r["digit_classifier_epochs"] = DIGIT_CLASSIFIER_EPOCHS
        r["digit_kept_target"] = DIGIT_KEPT_TARGET
        r["meets_target"] = min(r["digit_kept_ab"], r["digit_kept_ba"]) >= DIGIT_KEPT_TARGET
    return r, images


def sample_sheet(
    images: dict[str, np.ndarray], pair: DomainPair, columns: int = SHEET_COLUMNS
) -> Image.Image:
    """Rows: held-out A, A->B, A->B->A, held-out B, B->A, B->A->B; one digit per column."""

    def picks(data: ImageData) -> list[int]:
        if data.class_names:
            return [
                int(torch.nonzero(data.labels == k)[0])
                for k in range(min(columns, data.num_classes))
            ]
        return list(range(min(columns, len(data))))

    ia, ib = picks(pair.heldout_a), picks(pair.heldout_b)
    rows = [images[key][ia] for key in ("a", "ab", "aba")] + [
        images[key][ib] for key in ("b", "ba", "bab")
    ]
    sheet = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    picture = Image.fromarray(sheet.squeeze(-1) if sheet.shape[-1] == 1 else sheet)
    return picture.resize((picture.width * 3, picture.height * 3), Image.Resampling.NEAREST)


def render_report(m: Manifest, r: dict[str, Any]) -> str:
    t = m.translation
    lines = [
        f"# {m.name} v{m.version}: evaluation",
        "",
        f"CycleGAN, A = {t.domain_a}, B = {t.domain_b}; "
        f"{r['heldout_a']} + {r['heldout_b']} held-out images.",
        "",
        "| figure | A->B | B->A |",
        "| --- | --- | --- |",
    ]
    if "digit_kept_ab" in r:
        target = f"{DIGIT_KEPT_TARGET:.0%}"
        ceiling_a = r["digit_classifier_a_heldout_accuracy"]
        ceiling_b = r["digit_classifier_b_heldout_accuracy"]
        lines += [
            f"| digit kept (target >= {target}) | {r['digit_kept_ab']:.1%} "
            f"| {r['digit_kept_ba']:.1%} |",
            f"| digit kept untranslated (the source as is) | "
            f"{r['digit_kept_untranslated_ab']:.1%} | {r['digit_kept_untranslated_ba']:.1%} |",
            f"| digit kept after the cycle | {r['digit_kept_aba']:.1%} "
            f"| {r['digit_kept_bab']:.1%} |",
            f"| digit classifier ({r['digit_classifier_epochs']} epochs), real held-out "
            f"(ceiling) | B: {ceiling_b:.1%} "
            f"| A: {ceiling_a:.1%} |",
        ]
    lines.append(
        f"| domain classifier fooled | {r['domain_fooled_ab']:.1%} | {r['domain_fooled_ba']:.1%} |"
    )
    lines.append(f"| cycle error (0-255, clean) | {r['cycle_error_a']} | {r['cycle_error_b']} |")
    for key in sorted(k for k in r if k.startswith("perturbation_size_")):
        label = key.removeprefix("perturbation_size_")
        lines.append(
            f"| cycle error, intermediate {label} (perturbation {r[key]}) "
            f"| {r[f'cycle_error_a_{label}']} | {r[f'cycle_error_b_{label}']} |"
        )
    lines += [
        "",
        "Domain classifier on real held-out images: "
        f"{r['domain_classifier_heldout_accuracy']:.1%}.",
        "",
        f"![held-out A, A->B, A->B->A, held-out B, B->A, B->A->B]({SHEET_FILE})",
        "",
    ]
    return "\n".join(lines)


def training_pair(m: Manifest) -> DomainPair:
    """The domain pair a translator's manifest says it was trained on (held-out sets included)."""
    train_cfg = m.training.get("train_config", {})
    return load_domain_pair(
        train_cfg.get("data_a"),
        train_cfg.get("data_b"),
        m.image_size,
        train_cfg.get("channels"),
        # runs from before the MNIST-M pair trained on the fonts pair and did not record it
        train_cfg.get("pair", MNIST_FONTS),
    )


def evaluate_translator(
    version_dir: str | Path, *, threads: int = 1, write: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Score an image-to-image version directory; with ``write``, store the figures in its
    manifest and write report.md and samples.png beside it."""
    version_dir = Path(version_dir)
    m = Manifest.load(version_dir)
    if not m.translates:
        raise ValueError(f"{version_dir} holds a {m.kind} model, not an image-to-image one")

    def log(message: str) -> None:
        if progress:
            print(f"evaluate: {message}", flush=True)

    pair = training_pair(m)
    translate = OnnxTranslator(version_dir, m, threads)
    with torch_threads(threads):
        r, images = score_translator(translate, pair, log=log)
    if write:
        m.evaluation = r
        m.save(version_dir)
        sample_sheet(images, pair).save(version_dir / SHEET_FILE)
        (version_dir / REPORT_FILE).write_text(render_report(m, r), encoding="utf-8")
    return r
