"""Each family trains in the shared loop and exports to the one graph contract, with its
manifest, the parity check and the served seed-to-latent rule."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ganclient.local import LocalGenerator
from service.manifest import Manifest, model_latents, truncate_latents
from tests.service.conftest import run, running_app
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

    async def ask_service() -> list[np.ndarray]:
        async with running_app(tmp_path / "store") as (_, client):
            answers = []
            for psi in (None, 0.5):
                body = {"seed": 0, "n": 20, "format": "npy", "truncation": psi}
                r = await client.post(f"/v1/models/tiny-{name}/generate", json=body)
                assert r.status_code == 200, r.text
                answers.append(np.load(io.BytesIO(r.content)))
            return answers

    plain, truncated = run(ask_service())
    np.testing.assert_array_equal(plain, served)  # the service: same seeds, same images
    z_half = model_latents(m, seeds, 0.5)
    (expected_half,) = session.run(
        ["image"], {"z": truncate_latents(m, z_half, 0.5), "label": labels}
    )
    np.testing.assert_array_equal(truncated, expected_half)


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


def test_a_shorter_run_equals_a_longer_runs_checkpoint_at_that_epoch(
    tmp_path, tiny_mnist, make_config
) -> None:
    """Nothing depends on the total epochs: ``--epochs N`` reproduces epoch N of a longer run."""
    long_cfg = make_config(
        tmp_path / "long", family="progan", epochs=2, steps_per_epoch=2, keep_epoch_checkpoints=True
    )
    train(long_cfg, tiny_mnist)
    short = torch.load(
        train(make_config(tmp_path / "short", family="progan", steps_per_epoch=2), tiny_mnist),
        weights_only=True,
    )
    long = torch.load(tmp_path / "long" / "checkpoints" / "epoch_1.pt", weights_only=True)
    for part in ("generator", "generator_ema", "discriminator"):
        assert all(torch.equal(short[part][k], long[part][k]) for k in short[part]), part
