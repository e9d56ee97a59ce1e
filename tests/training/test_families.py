"""Every GAN family on the shared loop: a short training step, the model shapes, export parity;
and the 2014 GAN's own parts (maxout, the sigmoid output range, dropout only in training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.manifest import Manifest, latents_from_seeds
from training.checkpoint import generator_from_checkpoint, load_checkpoint
from training.data import ImageData
from training.export import export_checkpoint, tanh_to_uint8
from training.families import FAMILIES, Batch, get_family
from training.families.gan2014 import Maxout, MaxoutDiscriminator, MLPConfig, MLPGenerator
from training.loop import TrainConfig, Trainer, train


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conditional", [True, False], ids=["conditional", "unconditional"])
def test_a_training_step_gives_finite_losses_and_right_shapes(
    family: str, conditional: bool, tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    cfg = make_config(tmp_path / "run", family=family, conditional=conditional, ngf=16, ndf=8)
    trainer = Trainer(cfg, tiny_mnist)
    real, labels = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.g.parameters()]
    stats = trainer.train_step(real, labels)
    assert all(math.isfinite(v) for v in stats.values()), stats
    if "d_real" in stats:  # D's mean sigmoid outputs (the BCE families; others log scores)
        assert 0 < stats["d_real"] < 1 and 0 < stats["d_fake"] < 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.g.parameters(), strict=True))

    n = 5
    y = torch.arange(n) % 10 if conditional else None
    with torch.no_grad():
        images = trainer.g.eval()(torch.randn(n, cfg.nz), y)
        logits = trainer.d.eval()(images, y)
    assert images.shape == (n, 1, 16, 16) and images.abs().max() <= 1.0
    assert logits.shape == (n,)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_of_a_trained_checkpoint_keeps_parity_and_names_the_family(
    family: str, tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    path = train(make_config(tmp_path / "run", family=family, ngf=16, ndf=8), tiny_mnist)
    assert load_checkpoint(path)["family"] == family
    version_dir = export_checkpoint(path, tmp_path / "store", f"tiny-{family}")
    m = Manifest.load(version_dir)
    assert m.family == family and m.paper == get_family(family).paper and m.paper
    assert m.training["export"]["parity_max_abs_diff"] <= 1
    g, cfg, _ = generator_from_checkpoint(path)
    z = latents_from_seeds([3, 4, 5], cfg.nz)
    labels = np.array([1, 2, 3], dtype=np.int64)
    session = ort.InferenceSession(
        str(version_dir / "generator.onnx"), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run(["image"], {"z": z, "label": labels})
    with torch.no_grad():
        expected = tanh_to_uint8(g(torch.from_numpy(z), torch.from_numpy(labels))).numpy()
    assert got.shape == (3, 16, 16, 1) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_maxout_takes_the_largest_piece() -> None:
    layer = Maxout(2, units=1, pieces=3)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        layer.linear.bias.zero_()
    out = layer(torch.tensor([[2.0, 5.0], [-3.0, -4.0]]))
    assert out.tolist() == [[5.0], [7.0]]


def test_mlp_generator_is_the_papers_shape_and_range() -> None:
    cfg = MLPConfig(image_size=16, nz=100, width=1200)
    g = MLPGenerator(cfg)
    widths = [m.out_features for m in g.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1200, 1200, 16 * 16]  # noise -> 1200 ReLU -> 1200 ReLU -> sigmoid pixels
    conditional = MLPGenerator(MLPConfig(image_size=16, num_classes=10, width=1200))
    assert [conditional.z_layer[0].out_features, conditional.y_layer[0].out_features] == [200, 1000]
    with torch.no_grad():
        g.out.bias.fill_(100.0)  # saturated sigmoid: the image is white, exactly 1
        assert torch.equal(g(torch.randn(2, 100)), torch.ones(2, 1, 16, 16))


def test_maxout_discriminator_drops_out_only_in_training() -> None:
    d = MaxoutDiscriminator(MLPConfig(image_size=16, num_classes=10, d_units=24))
    x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
    d.eval()
    assert torch.equal(d(x, y), d(x, y))
    d.train()
    torch.manual_seed(0)
    assert not torch.equal(d(x, y), d(x, y))


def test_gan2014_input_dropout_comes_from_the_run_config() -> None:
    """--d-input-dropout reaches D: at 0 the input is seen whole, at 0.5 about half of it."""
    family = get_family("gan2014")
    for rate in (0.0, 0.5):
        cfg = family.model_config(TrainConfig(family="gan2014", d_input_dropout=rate), 1, 0)
        d = MaxoutDiscriminator(cfg).train()
        kept = d.drop_in(torch.ones(1, 4096))
        assert cfg.d_input_dropout == rate
        assert float((kept == 0).float().mean()) == pytest.approx(rate, abs=0.05)
    with pytest.raises(ValueError, match="d_input_dropout"):
        TrainConfig(family="gan2014", d_input_dropout=1.0)


def test_gan2014_generator_loss_is_non_saturating() -> None:
    """-log D(G(z)): strong gradients where D rejects the fakes, unlike log(1 - D(G(z)))."""
    family = get_family("gan2014")
    cfg = MLPConfig(image_size=16, nz=4, width=8, d_units=4)
    g, d = family.build(cfg)
    with torch.no_grad():
        d.out.bias.fill_(-20.0)  # D is sure every image is fake
    batch = Batch(real=torch.zeros(3, 1, 16, 16), labels=None, z=torch.randn(3, 4))
    from training.loop import TrainConfig

    _, state = family.d_loss(g, d, batch, TrainConfig(family="gan2014"))
    loss_g = family.g_loss(d, batch, state, TrainConfig(family="gan2014"))
    assert loss_g.item() == pytest.approx(20.0, abs=0.1)


def test_gan2014_output_bias_starts_at_the_pixel_marginals(tiny_mnist: ImageData) -> None:
    family = get_family("gan2014")
    g, d = family.build(MLPConfig(image_size=16, nz=4, width=8, d_units=4))
    family.init_from_data(g, d, tiny_mnist.images)
    with torch.no_grad():
        g.out.weight.zero_()  # the output is then the bias alone
        image = g(torch.randn(1, 4))[0]
    mean = tiny_mnist.images.mean(dim=0)
    assert torch.allclose(image, (mean.clamp(-0.998, 0.998)), atol=1e-4)


def test_family_table_counts_the_generators_weights(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    from training.family_table import generator_parameters

    cfg = make_config(tmp_path / "run", family="gan2014", ngf=16, ndf=8)
    path = train(cfg, tiny_mnist)
    version_dir = export_checkpoint(path, tmp_path / "store", "tiny")
    g, _, _ = generator_from_checkpoint(path)
    assert generator_parameters(version_dir / "generator.onnx") == sum(
        p.numel() for p in g.parameters()
    )
