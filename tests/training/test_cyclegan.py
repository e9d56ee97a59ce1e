"""CycleGAN: the model contract's image-to-image manifest, the digit domains, a tiny run,
its one-graph export with parity, and the scores on a known translator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.manifest import (
    ArtifactMismatch,
    Manifest,
    SideFile,
    sha256_file,
)
from tests.support.tiny_translator import write_tiny_translator
from training.data import DatasetError, ImageData
from training.domains import (
    MNIST_M,
    DomainPair,
    blend_over_photos,
    load_domain_pair,
    load_embedded_pair,
    render_digit,
)
from training.translation_eval import OnnxTranslator, score_translator

SHIPPED = Path(__file__).resolve().parents[2] / "model_store" / "mnist-cdcgan"


def test_old_manifest_loads_as_noise_to_image(tmp_path: Path) -> None:
    version_dir = max(SHIPPED.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    data = json.loads((version_dir / "manifest.json").read_text())
    data.pop("kind", None)
    for spec in data["inputs"] + data["outputs"]:
        spec.pop("range", None)
    m = Manifest.model_validate(data)
    assert m.kind == "noise-to-image" and not m.translates
    assert m.outputs[0].range == [0, 255]  # the contract's range is filled in
    data["outputs"][0]["range"] = [0, 1]
    with pytest.raises(ValueError, match="range"):
        Manifest.model_validate(data)


def test_image_to_image_manifest_and_side_files(tmp_path: Path) -> None:
    directory = write_tiny_translator(tmp_path, "flip")
    m = Manifest.load(directory)
    assert m.translates and [s.name for s in m.inputs] == ["source", "direction"]
    (directory / "vocab.txt").write_text("a\n")
    m.side_files = [SideFile(file="vocab.txt", sha256=sha256_file(directory / "vocab.txt"))]
    m.verify_artifact(directory)
    (directory / "vocab.txt").write_text("b\n")
    with pytest.raises(ArtifactMismatch, match="vocab.txt"):
        m.verify_artifact(directory)
    data = json.loads(m.model_dump_json())
    data["nz"] = 8
    with pytest.raises(ValueError, match="nz 0"):
        Manifest.model_validate(data)


def test_typeset_digits_are_deterministic() -> None:
    first = render_digit(7, np.random.Generator(np.random.PCG64(3)))
    again = render_digit(7, np.random.Generator(np.random.PCG64(3)))
    other = render_digit(7, np.random.Generator(np.random.PCG64(4)))
    assert first.shape == (64, 64) and first.max() == 255 and first[:, :4].max() == 0
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_mnist_m_blend_is_the_photo_where_no_stroke_and_its_inverse_on_one() -> None:
    """|patch - digit|: a black pixel shows the photo, a white stroke the photo's inverse."""
    photo = np.zeros((8, 8, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = 40, 200, 90  # one flat colour
    digit = -torch.ones(1, 1, 8, 8)
    digit[0, 0, 2:6, 3] = 1.0  # a white vertical stroke
    out = blend_over_photos(digit, [photo], seed=0, image_size=8)
    pixels = torch.round((out + 1.0) * 127.5).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert out.shape == (1, 3, 8, 8)
    assert (pixels[0, 0] == (40, 200, 90)).all()  # background: the photo
    assert (pixels[3, 3] == (215, 55, 165)).all()  # stroke: 255 - the photo
    again = blend_over_photos(digit, [photo], seed=0, image_size=8)
    assert torch.equal(out, again)


def test_embedded_pairs_are_unpaired_and_named() -> None:
    pair = load_embedded_pair(32, MNIST_M)
    assert pair.train_a.channels == pair.train_b.channels == 3  # one translator, both ways
    assert len(pair.train_a) == len(pair.train_b) == 2000 and pair.labelled
    grey = pair.train_a.images
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    assert not torch.equal(pair.train_b.images[:, 0], pair.train_b.images[:, 1])
    with pytest.raises(DatasetError, match="unknown embedded pair 'svhn'"):
        load_embedded_pair(32, "svhn")


@pytest.mark.parametrize(("d_downsample", "patch", "scores"), [(1, 16, 16), (2, 26, 8), (3, 38, 4)])
def test_patch_discriminator_judges_patches_of_the_documented_size(
    d_downsample: int, patch: int, scores: int
) -> None:
    """One score per ``patch``-sided patch of a 32x32 image (the default: the documented
    PatchGAN scaling, 16x16), and a score moves only with the pixels of its own patch."""
    from training.families.cyclegan import CycleGAN, CycleGANConfig, receptive_field

    d = CycleGAN(CycleGANConfig(d_downsample=d_downsample)).d_a.eval()
    assert receptive_field(d) == patch
    assert d(torch.zeros(1, 1, 32, 32)).shape == (1, 1, scores, scores)
    for i, layer in enumerate(d.net):  # instance norm mixes the whole image: leave it out
        if isinstance(layer, torch.nn.InstanceNorm2d):
            d.net[i] = torch.nn.Identity()
    x = torch.rand(1, 1, 32, 32, requires_grad=True)
    out = d(x)
    out[0, 0, scores // 2, scores // 2].backward()
    rows, cols = torch.nonzero(x.grad[0, 0]).unbind(1)
    seen = min(patch, 32)
    assert int(rows.max()) - int(rows.min()) < seen and int(cols.max()) - int(cols.min()) < seen
    if d_downsample > 1:  # larger patches than the default's 16 reach past half the image
        assert int(rows.max()) - int(rows.min()) >= 16


def test_the_discriminator_keeps_its_weight_names_at_every_depth() -> None:
    """Checkpoints name D's weights the same whatever ``d_downsample`` is."""
    from training.families.cyclegan import CycleGANConfig, PatchDiscriminator

    names = [
        [name for name, _ in PatchDiscriminator(CycleGANConfig(d_downsample=d)).named_parameters()]
        for d in (1, 2, 3)
    ]
    assert names[0] == names[1] == names[2]


def test_folder_pair_needs_both_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-b"):
        load_domain_pair(str(tmp_path), None)
    with pytest.raises(DatasetError):
        load_domain_pair(str(tmp_path), str(tmp_path))  # empty folders: the loader's error


def tiny_pair(n: int = 40, size: int = 8) -> DomainPair:
    """Two labelled toy domains: bars (A) and their inverse (B), size x size, 2 classes."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    a = -torch.ones(n, 1, size, size)
    a[labels == 0, :, :, 2:4] = 1.0  # vertical bar
    a[labels == 1, :, 2:4, :] = 1.0  # horizontal bar
    a = (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(-1, 1)
    names = ["vertical", "horizontal"]
    half = n // 2

    def data(x: torch.Tensor, idx: slice) -> ImageData:
        return ImageData(x[idx].clone(), labels[idx].clone(), names, "toy")

    b = -a
    return DomainPair(
        data(a, slice(0, half)),
        data(b, slice(0, half)),
        data(a, slice(half, n)),
        data(b, slice(half, n)),
        "bars",
        "inverted bars",
    )


def tiny_run_config(out_dir: Path, steps: int, **options: Any) -> Any:
    """A CycleTrainConfig for a few-second run on :func:`tiny_pair` images of 16x16."""
    from training.cyclegan_train import CycleTrainConfig

    return CycleTrainConfig(
        out_dir=str(out_dir),
        image_size=16,
        ngf=4,
        ndf=4,
        n_blocks=1,
        steps=steps,
        batch_size=4,
        log_every=1,
        sample_every=steps,
        pool_size=5,
        **options,
    )


def test_scores_of_a_known_translator() -> None:
    """Inverting the pixels maps each toy domain onto the other exactly: shapes kept, domain
    fooled, no cycle error; a perturbation of the intermediate passes straight through."""
    r, images = score_translator(lambda x, _: 255 - x, tiny_pair(), log=lambda _: None)
    assert r["cycle_error_a"] == 0.0 and r["cycle_error_b"] == 0.0
    assert r["digit_kept_ab"] == 1.0 and r["digit_kept_ba"] == 1.0
    assert r["domain_fooled_ab"] >= 0.9 and r["domain_fooled_ba"] >= 0.9
    assert 1.0 < r["cycle_error_a_noise_sigma2"] < 2.0
    assert np.array_equal(images["ab"], 255 - images["a"])
    # Not translating at all scores what the untranslated floor says it would.
    same, _ = score_translator(lambda x, _: x, tiny_pair(), log=lambda _: None)
    assert same["digit_kept_ab"] == pytest.approx(r["digit_kept_untranslated_ab"], abs=0.05)
    assert same["digit_kept_ba"] == pytest.approx(r["digit_kept_untranslated_ba"], abs=0.05)


def test_onnx_translator_runs_both_directions(tmp_path: Path) -> None:
    directory = write_tiny_translator(tmp_path, "flip")
    translate = OnnxTranslator(directory, Manifest.load(directory))
    x = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8, 1)
    assert np.array_equal(translate(x, 0), 255 - x) and np.array_equal(translate(x, 1), x)


@pytest.mark.slow
def test_tiny_run_exports_one_graph_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    from training.cyclegan_export import export_translator, to_uint8_nhwc
    from training.cyclegan_train import load_cyclegan, train_cyclegan

    pair = tiny_pair(size=16)
    cfg = tiny_run_config(tmp_path / "run", steps=3)
    model, ckpt = load_cyclegan(train_cyclegan(cfg, pair))
    assert len(ckpt["history"]) == 3 and ckpt["model_config"]["image_size"] == 16
    assert {"loss_cycle_a", "loss_cycle_b", "loss_d_b"} <= set(ckpt["history"][-1])
    for written in ("loss_curve.png", "metrics.jsonl", "samples/step_000003.png"):
        assert (tmp_path / "run" / written).stat().st_size > 0, written
    source = to_uint8_nhwc(torch.cat([pair.heldout_a.images[:4], pair.heldout_b.images[:4]]))
    version_dir = export_translator(
        model, tmp_path / "store", "toy", parity_source=source, domain_a="a", domain_b="b"
    )
    m = Manifest.load(version_dir)
    assert m.translates and m.training["export"]["parity_max_abs_diff"] <= 1
    session = ort.InferenceSession(str(version_dir / "generator.onnx"))
    out = session.run(None, {"source": source, "direction": np.array([0, 1] * 4, np.int64)})[0]
    with torch.no_grad():
        x = torch.from_numpy(source).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # what ORT saw
        to_b = to_uint8_nhwc(model.g_ab(torch.cat([x[:1]])))
        to_a = to_uint8_nhwc(model.g_ba(torch.cat([x[1:2]])))
    assert np.abs(out[0].astype(int) - to_b[0]).max() <= 1  # row 0: direction 0, A->B
    assert np.abs(out[1].astype(int) - to_a[0]).max() <= 1  # row 1: direction 1, B->A


def test_torchserve_archive_refuses_an_image_to_image_model(tmp_path: Path) -> None:
    from training.torchserve_archive import build_mar

    directory = write_tiny_translator(tmp_path, "flip")
    with pytest.raises(ValueError, match="image-to-image"):
        build_mar(directory, tmp_path / "flip.mar")


def _one_step_g_ab(**weights: float | bool | None) -> list[torch.Tensor]:
    """G_AB's weights after one training step from a fixed start with these loss weights."""
    import random

    from training.cyclegan_train import CycleTrainConfig, ImagePool, _step
    from training.families.cyclegan import CycleGAN, CycleGANConfig

    torch.manual_seed(0)
    model = CycleGAN(CycleGANConfig(image_size=16, channels=1, ngf=4, ndf=4, n_blocks=1))
    cfg = CycleTrainConfig(**weights)
    opt_g = torch.optim.Adam([*model.g_ab.parameters(), *model.g_ba.parameters()], 1e-2)
    opt_d = torch.optim.Adam([*model.d_a.parameters(), *model.d_b.parameters()], 1e-2)
    pools = ImagePool(0, random.Random(0)), ImagePool(0, random.Random(0))
    pair = tiny_pair(size=16)
    _step(model, opt_g, opt_d, *pools, pair.train_a.images[:4], pair.train_b.images[:4], cfg)
    return [p.detach().clone() for p in model.g_ab.parameters()]


def test_the_b_cycle_has_its_own_weight() -> None:
    """``lambda_cycle_b`` weighs only the B->A->B cycle, and leaving it unset means the
    paper's single weight for both cycles."""
    same = _one_step_g_ab(lambda_cycle=10.0, lambda_cycle_b=None)
    explicit = _one_step_g_ab(lambda_cycle=10.0, lambda_cycle_b=10.0)
    assert all(torch.equal(x, y) for x, y in zip(same, explicit, strict=True))
    without = _one_step_g_ab(lambda_cycle=10.0, lambda_cycle_b=0.0)
    assert not all(torch.equal(x, y) for x, y in zip(same, without, strict=True))


def test_a_b_cycle_weighted_zero_is_skipped_without_changing_the_step() -> None:
    """With ``lambda_cycle_b`` 0 the B cycle is only logged (no backward pass through it);
    the step must equal one that trains the cycle at a weight too small to move a float32
    gradient, bit for bit."""
    skipped = _one_step_g_ab(lambda_cycle=10.0, lambda_cycle_b=0.0)
    trained = _one_step_g_ab(lambda_cycle=10.0, lambda_cycle_b=1e-30)
    assert all(torch.equal(x, y) for x, y in zip(skipped, trained, strict=True))


def test_each_network_treats_every_image_alone_so_one_call_serves_several_losses() -> None:
    """The step runs each network once on concatenated images (the fake, identity and cycle
    inputs together): in training mode every image's output must be what it gets alone, which
    instance norm gives and batch norm would not."""
    from training.families.cyclegan import CycleGAN, CycleGANConfig

    torch.manual_seed(0)
    cfg = CycleGANConfig(image_size=16, channels=3, ngf=4, ndf=4, n_blocks=1, d_downsample=2)
    model = CycleGAN(cfg).train()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    for net in (model.g_ab, model.g_ba, model.d_a, model.d_b):
        together = net(images)
        alone = torch.cat([net(images[i : i + 1]) for i in range(len(images))])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_an_empty_pool_hands_the_discriminators_detached_images() -> None:
    import random

    from training.cyclegan_train import ImagePool

    fake = torch.ones(2, 1, 4, 4, requires_grad=True) * 2.0
    for size in (0, 3):
        out = ImagePool(size, random.Random(0)).query(fake)
        assert not out.requires_grad and torch.equal(out, fake.detach())


def test_recolour_reorders_channels_and_inverts_some_images() -> None:
    """Each image keeps its channel values, reordered, and sign-flipped all together or not
    at all; over many images both polarities and several channel orders occur."""
    from training.cyclegan_train import recolour

    torch.manual_seed(0)
    # channel k holds the constant (k + 1) / 4, so each output pixel names its source channel
    images = (torch.arange(1, 4, dtype=torch.float32) / 4).view(1, 3, 1, 1).repeat(64, 1, 2, 2)
    out = recolour(images)
    assert out.shape == images.shape
    signs = torch.sign(out[:, :, 0, 0])
    assert bool((signs == signs[:, :1]).all())  # one polarity per image
    assert {-1.0, 1.0} == set(signs[:, 0].tolist())
    values = (out[:, :, 0, 0] * signs).abs()
    assert bool((values.sort(dim=1).values == images[:, :, 0, 0]).all())  # a permutation
    assert len({tuple(v) for v in values.tolist()}) > 2  # several orders
    assert bool((out == out[:, :, :1, :1]).all())  # the same per pixel within a channel
    grey = recolour(torch.full((8, 1, 2, 2), 0.5, requires_grad=True))
    grey.sum().backward()  # differentiable, so the cycle's gradient reaches G_AB


def test_the_a_cycle_augmentation_is_off_by_default_and_changes_the_step() -> None:
    """Unset, ``augment_cycle_a`` is the paper's step; set, G_BA sees recoloured images."""
    paper = _one_step_g_ab(lambda_cycle=10.0)
    explicit = _one_step_g_ab(lambda_cycle=10.0, augment_cycle_a=False)
    assert all(torch.equal(x, y) for x, y in zip(paper, explicit, strict=True))
    augmented = _one_step_g_ab(lambda_cycle=10.0, augment_cycle_a=True)
    assert not all(torch.equal(x, y) for x, y in zip(paper, augmented, strict=True))


def test_jitter_crops_each_grown_image_at_a_random_place() -> None:
    """Each output is exactly one crop of its image resized to the load size, and the crops
    fall at several places."""
    import torch.nn.functional as F

    from training.cyclegan_train import jitter

    images = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = jitter(images, 10, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    grown = F.interpolate(images, size=(10, 10), mode="bilinear", align_corners=False)
    corners = set()
    for i in range(len(images)):
        found = [
            (y, x)
            for y in range(3)
            for x in range(3)
            if torch.equal(out[i], grown[i, :, y : y + 8, x : x + 8])
        ]
        assert len(found) == 1
        corners.add(found[0])
    assert len(corners) > 3
