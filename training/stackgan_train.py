"""``gan-train stackgan``: train a text-to-image StackGAN on captioned MNIST and export it.

The captions come from the digits themselves (``training/captions.py``). First the text
encoder is pre-trained against the images (a joint embedding) and frozen, as the paper's
encoder was; then the GAN trains. Every step draws one phrasing per image, so the model
sees varied text. Both stages train together, Stage-II on Stage-I's detached output; the
run ends after ``--steps``, ``--minutes`` or ``--cpu-minutes``, whichever comes first, then
the generator goes to ``model_store/<name>/<version>/`` with its vocabulary file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.manifest import (
    ONNX_FILE,
    TEXT_TO_IMAGE,
    ArtifactSpec,
    Manifest,
    SideFile,
    TextSpec,
    expected_outputs,
    expected_text_inputs,
    latents_from_seeds,
    next_version,
    sha256_file,
    utc_now,
)
from service.text import VOCABULARY_FILE, Vocabulary
from training.captions import THRESHOLDS, Threshold, attribute_words, phrasings, vocabulary
from training.cli import model_name
from training.data import MNIST_CLASS_NAMES, load_embedded_mnist
from training.families.stackgan import (
    PAPER,
    ImageEncoder,
    MatchingDiscriminator,
    ServingStackGAN,
    StackGANConfig,
    StackGenerator,
    TextEncoder,
    joint_embedding_loss,
)

IMAGE_SIZE = 32
PARITY_SAMPLES = 256
PARITY_TOLERANCE = 1  # intensity levels


@dataclass
class StackTrainConfig:
    out: str = "runs/stackgan"
    steps: int = 3000
    minutes: float = 14.0  # wall-clock limit
    cpu_minutes: float = 12.0  # this process's CPU time: the same on a busy machine
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    kl_weight: float = 0.05  # the paper's lambda is 1; see docs/TRAINING.md
    mismatch_weight: float = 0.5  # (real, wrong caption) and (fake, caption) share the fake half
    pretrain_steps: int = 400  # text encoder against images, before the GAN; then frozen
    pretrain_batch_size: int = 128
    pretrain_lr: float = 2e-3
    probe_every: int = 0  # log the digit read on held-out captions every N steps (0: never)
    seed: int = 0
    threads: int = 1
    log_every: int = 50


@dataclass
class CaptionedDigits:
    """Images [N, 1, 32, 32] in [-1, 1], labels [N], and every image's phrasings as tokens."""

    images: torch.Tensor
    labels: torch.Tensor
    tokens: list[torch.Tensor]  # per image: int64 [P_i, L]
    captions: list[list[str]]
    sides: torch.Tensor  # int64 [N, attributes]: -1 the low word, 1 the high word, 0 unsaid

    @property
    def keys(self) -> torch.Tensor:
        """Per image, an id of its canonical caption: equal ids, the same words."""
        ids: dict[str, int] = {}
        return torch.tensor([ids.setdefault(c[0], len(ids)) for c in self.captions])


def captioned(split: Any, vocab: Vocabulary) -> CaptionedDigits:
    pixels = (split.images[:, 0].numpy() + 1.0) / 2.0
    labels = split.labels.numpy()
    words = attribute_words(pixels)
    captions = [phrasings(int(d), w) for d, w in zip(labels, words, strict=True)]
    tokens = [torch.from_numpy(vocab.encode_many(c)) for c in captions]
    sides = torch.tensor(
        [[_side(t, w[t.measure]) for t in THRESHOLDS] for w in words], dtype=torch.int64
    )
    return CaptionedDigits(split.images, split.labels, tokens, captions, sides)


def _side(threshold: Threshold, word: str | None) -> int:
    return 0 if word is None else (1 if word == threshold.high_word else -1)


def pick_tokens(data: CaptionedDigits, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random phrasing of each image in ``index``: int64 [B, L]."""
    rows = []
    for i in index.tolist():
        options = data.tokens[i]
        rows.append(options[int(torch.randint(len(options), (1,), generator=gen))])
    return torch.stack(rows)


def mismatched(labels: torch.Tensor, sides: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each position, a random other position of the batch whose caption is false of
    this image: another digit, or an attribute word opposite to this image's (thick for a
    thin digit). Such captions teach the discriminators every word, not only the digit."""
    n = len(labels)
    opposite = (sides[:, None, :] * sides[None, :, :] == -1).any(-1)  # N x N
    false = (labels[:, None] != labels[None, :]) | opposite
    draw = torch.rand(n, n, generator=gen) * false + 2.0 * false  # false captions rank first
    draw[torch.arange(n), torch.arange(n)] = -1.0
    return draw.argmax(1)


def pretrain_text_encoder(
    encoder: TextEncoder,
    mcfg: StackGANConfig,
    data: CaptionedDigits,
    cfg: StackTrainConfig,
    gen: torch.Generator,
) -> dict[str, float]:
    """Fit the text encoder to the images its captions describe, then freeze it.

    A small image encoder and the text encoder learn a joint embedding
    (``joint_embedding_loss``), as the paper's text encoder was pre-trained on image-caption
    pairs; the image encoder is dropped afterwards. Returns the last loss and how often a
    held-in caption's nearest image class (by mean image embedding) is its own.
    """
    encoder.requires_grad_(True)
    images_side = ImageEncoder(mcfg)
    params = [*encoder.parameters(), *images_side.parameters()]
    opt = torch.optim.Adam(params, cfg.pretrain_lr)
    keys = data.keys
    n = len(data.images)
    loss = torch.zeros(())
    for _ in range(cfg.pretrain_steps):
        index = torch.randint(n, (cfg.pretrain_batch_size,), generator=gen)
        tokens = pick_tokens(data, index, gen)
        loss = joint_embedding_loss(images_side(data.images[index]), encoder(tokens), keys[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    encoder.requires_grad_(False)
    with torch.no_grad():
        text = F.normalize(encoder(torch.stack([t[0] for t in data.tokens])), dim=1)
        digits = data.labels
        centres = torch.stack([text[digits == d].mean(0) for d in range(10)])
        digit_nearest = float(((text @ centres.T).argmax(1) == digits).float().mean())
    return {"loss": round(loss.item(), 4), "digit_nearest_centre": round(digit_nearest, 4)}


def heldout_probe(vocab: Vocabulary, n: int = 500) -> Any:
    """A callable: generator -> digit read and attribute agreement on ``n`` held-out captions
    (the reference classifier, in PyTorch; a progress log, not the evaluation)."""
    from training.classifier import load_reference_classifier, predict
    from training.text_eval import agreement

    reference = load_reference_classifier(IMAGE_SIZE).model
    _, heldout = load_embedded_mnist(IMAGE_SIZE)
    held = captioned(heldout, vocab)
    captions = [opts[i % len(opts)] for i, opts in enumerate(held.captions[:n])]
    tokens = torch.from_numpy(vocab.encode_many(captions))
    seeds = list(range(n))

    def probe(g: StackGenerator) -> dict[str, float]:
        z = torch.from_numpy(latents_from_seeds(seeds, g.cfg.nz))
        g.eval()
        with torch.no_grad():
            images = g(tokens, z)["high"]
        g.train()
        read = float((predict(reference, images) == held.labels[:n].numpy()).mean())
        pixels = ((images[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8)[..., None]
        agree = {k: round(v["agree"], 3) for k, v in agreement(pixels, captions).items()}
        return {"digit_read": round(read, 3), **agree}

    return probe


def train(cfg: StackTrainConfig) -> tuple[StackGenerator, dict[str, Any]]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = vocabulary()
    train_split, _ = load_embedded_mnist(IMAGE_SIZE)
    data = captioned(train_split, vocab)
    mcfg = StackGANConfig(vocab_size=vocab.size, max_tokens=vocab.max_tokens)
    g = StackGenerator(mcfg)
    started, cpu_started = time.time(), time.process_time()
    pretrained = pretrain_text_encoder(g.text, mcfg, data, cfg, gen)
    pretrained["cpu_s"] = round(time.process_time() - cpu_started, 1)
    print(f"text encoder pre-trained: {pretrained}", flush=True)
    probe = heldout_probe(vocab) if cfg.probe_every else None
    d1, d2 = MatchingDiscriminator(mcfg, 16), MatchingDiscriminator(mcfg, 32)
    betas = (cfg.beta1, 0.999)
    trained = [p for p in g.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(trained, cfg.lr, betas=betas)
    opt_d = torch.optim.Adam([*d1.parameters(), *d2.parameters()], cfg.lr, betas=betas)
    bce = F.binary_cross_entropy_with_logits
    history: list[dict[str, float]] = []
    step = 0
    n = len(data.images)
    while (
        step < cfg.steps
        and time.time() - started < cfg.minutes * 60
        and time.process_time() - cpu_started < cfg.cpu_minutes * 60
    ):
        index = torch.randint(n, (cfg.batch_size,), generator=gen)
        real2 = data.images[index]
        real1 = F.avg_pool2d(real2, 2)  # the 16x16 target of Stage-I
        tokens = pick_tokens(data, index, gen)
        wrong = mismatched(data.labels[index], data.sides[index], gen)
        z = torch.randn(cfg.batch_size, mcfg.nz, generator=gen)
        out = g(tokens, z)
        text = out["text"].detach()
        ones, zeros = torch.ones(cfg.batch_size), torch.zeros(cfg.batch_size)
        loss_d = torch.zeros(())
        for d, real, fake in ((d1, real1, out["low"]), (d2, real2, out["high"])):
            h = d.image(real)  # one pass over the real images serves both captions
            loss_d = loss_d + bce(d.judge(h, text), ones)
            loss_d = loss_d + cfg.mismatch_weight * bce(d.judge(h, text[wrong]), zeros)
            loss_d = loss_d + cfg.mismatch_weight * bce(d(fake.detach(), text), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        adv = bce(d1(out["low"], out["text"]), ones) + bce(d2(out["high"], out["text"]), ones)
        loss_g = adv + cfg.kl_weight * out["kl"]
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % cfg.log_every == 0:
            row = {"step": step, "loss_d": loss_d.item(), "loss_g": adv.item()}
            row["kl"] = out["kl"].item()
            history.append(row)
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
        if probe is not None and step % cfg.probe_every == 0:
            print(f"step {step} held-out probe: {probe(g)}", flush=True)
    info = {
        "train_config": asdict(cfg),
        "steps": step,
        "text_encoder_pretraining": pretrained,
        "elapsed_s": round(time.time() - started, 1),
        "cpu_s": round(time.process_time() - cpu_started, 1),
        "final_losses": history[-1] if history else None,
    }
    return g.eval(), info


def _export_onnx(serving: ServingStackGAN, mcfg: StackGANConfig, path: Path) -> None:
    z = torch.zeros(2, mcfg.nz)
    tokens = torch.ones(2, mcfg.max_tokens, dtype=torch.int64)
    torch.onnx.export(
        serving,
        (z, tokens),
        str(path),
        input_names=["z", "tokens"],
        output_names=["image"],
        dynamic_axes={"z": {0: "n"}, "tokens": {0: "n"}, "image": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def parity_check(serving: ServingStackGAN, path: Path, tokens: np.ndarray) -> int:
    """Largest intensity difference between ONNX Runtime and PyTorch on seeds 0..N-1."""
    import onnxruntime as ort

    z = latents_from_seeds(list(range(len(tokens))), serving.generator.cfg.nz)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"z": z, "tokens": tokens})[0].astype(np.int32)
    with torch.no_grad():
        want = serving(torch.from_numpy(z), torch.from_numpy(tokens)).numpy().astype(np.int32)
    diff = int(np.abs(got - want).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {diff} intensity levels")
    return diff


def export_stackgan(
    g: StackGenerator, store: str | Path, name: str, training: dict[str, Any]
) -> Path:
    """Write ``store/name/<version>/`` (graph, vocabulary, manifest) in one rename."""
    vocab = vocabulary()
    mcfg = g.cfg
    model_dir = Path(store) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    try:
        serving = ServingStackGAN(g).eval()
        onnx_path = tmp_dir / ONNX_FILE
        _export_onnx(serving, mcfg, onnx_path)
        _, heldout = load_embedded_mnist(IMAGE_SIZE)
        held = captioned(heldout, vocab)
        tokens = np.stack(
            [t[0].numpy() for t in held.tokens[:: len(held.tokens) // PARITY_SAMPLES]]
        )
        diff = parity_check(serving, onnx_path, tokens[:PARITY_SAMPLES])
        vocab_path = vocab.save(tmp_dir)
        manifest = Manifest(
            name=name,
            version=version,
            created_at=utc_now(),
            description="StackGAN: a caption such as 'a thick slanted seven' -> a 32x32 digit",
            family="stackgan",
            paper=PAPER,
            kind=TEXT_TO_IMAGE,
            nz=mcfg.nz,
            image_size=IMAGE_SIZE,
            channels=mcfg.channels,
            num_classes=10,
            class_names=list(MNIST_CLASS_NAMES),
            inputs=expected_text_inputs(mcfg.nz, vocab.max_tokens, vocab.size),
            outputs=expected_outputs(IMAGE_SIZE, mcfg.channels),
            text=TextSpec(
                vocabulary=VOCABULARY_FILE, vocab_size=vocab.size, max_tokens=vocab.max_tokens
            ),
            artifact=ArtifactSpec(file=ONNX_FILE, sha256=sha256_file(onnx_path), opset=17),
            side_files=[
                SideFile(file=VOCABULARY_FILE, sha256=sha256_file(vocab_path), purpose="vocabulary")
            ],
            training={
                "model_config": mcfg.to_dict(),
                **training,
                "export": {"parity_max_abs_diff": diff, "parity_samples": len(tokens)},
            },
        )
        manifest.save(tmp_dir)
        os.chmod(tmp_dir, 0o755)
        os.rename(tmp_dir, model_dir / str(version))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return model_dir / str(version)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = StackTrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="wall limit")
    parser.add_argument(
        "--cpu-minutes", type=float, default=defaults.cpu_minutes, help="CPU time limit"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    parser.add_argument("--kl-weight", type=float, default=defaults.kl_weight, help="KL term")
    parser.add_argument(
        "--probe-every",
        type=int,
        default=defaults.probe_every,
        help="log the digit read on 500 held-out captions every N steps (0: never)",
    )
    parser.add_argument("--out", default=defaults.out, help="run directory (checkpoint)")
    parser.add_argument("--store", default="model_store", help="the model store")
    parser.add_argument(
        "--name", type=model_name, default="mnist-stackgan", help="model name in the store"
    )


def run(args: argparse.Namespace) -> int:
    cfg = StackTrainConfig(
        out=args.out,
        steps=args.steps,
        minutes=args.minutes,
        cpu_minutes=args.cpu_minutes,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        kl_weight=args.kl_weight,
        probe_every=args.probe_every,
    )
    g, info = train(cfg)
    info["command"] = "gan-train " + " ".join(sys.argv[1:])
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    ckpt = Path(cfg.out) / "last.pt"
    torch.save({"model_config": g.cfg.to_dict(), "generator": g.state_dict(), **info}, ckpt)
    info["checkpoint_sha256"] = sha256_file(ckpt)
    print(export_stackgan(g, args.store, args.name, info))
    return 0
