"""Each family trains in the shared loop and exports to the one graph contract, with its
manifest, the parity check and the served seed-to-latent rule."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ganclient.local import LocalGenerator
from service.manifest import Manifest, model_latents
from training.checkpoint import generator_from_checkpoint
from training.export import export_checkpoint
from training.families import get_family
from training.loop import train


@pytest.mark.parametrize("name", ["progan", "biggan"])
def test_family_trains_and_exports_with_parity_and_the_served_latent_rule(
    tmp_path, tiny_mnist, make_config, name
) -> None:
    cfg = make_config(tmp_path / "run", family=name, nz=12, batch_size=8, steps_per_epoch=2)
    ckpt_path = train(cfg, tiny_mnist)
    version_dir = export_checkpoint(ckpt_path, tmp_path / "store", f"tiny-{name}")
    m = Manifest.load(version_dir)
    family = get_family(name)
    assert (m.family, m.paper, m.truncation) == (name, family.paper, family.truncation)
    assert m.training["export"]["parity_max_abs_diff"] <= 1
    assert [t.name for t in m.inputs] == ["z", "label"] and m.outputs[0].shape == [-1, 16, 16, 1]

    seeds, labels = list(range(20)), np.arange(20) % 10
    z = model_latents(m, seeds)
    if m.truncation is not None:
        assert np.abs(z).max() <= m.truncation.threshold
    session = ort.InferenceSession(str(m.onnx_path(version_dir)))
    (served,) = session.run(["image"], {"z": z, "label": labels})
    g, _, _ = generator_from_checkpoint(ckpt_path)
    with torch.no_grad():
        pixels = (g(torch.from_numpy(z), torch.from_numpy(labels)) + 1) * 127.5
    expected = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
    with LocalGenerator(version_dir) as local:  # ganclient --local draws by the same rule
        np.testing.assert_array_equal(local.generate_seeds(seeds, labels), served)


@pytest.mark.parametrize("name", ["progan", "biggan"])
def test_family_runs_are_bitwise_reproducible(tmp_path, tiny_mnist, make_config, name) -> None:
    states = []
    for run_dir in ("a", "b"):
        cfg = make_config(tmp_path / run_dir, family=name, nz=12, batch_size=8, steps_per_epoch=3)
        states.append(torch.load(train(cfg, tiny_mnist), weights_only=True))
    for part in ("generator", "generator_ema", "discriminator"):
        a, b = states[0][part], states[1][part]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
