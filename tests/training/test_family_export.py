"""Each family exports to the one graph contract, with its manifest, parity and latent rule."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ganclient.local import LocalGenerator
from service.manifest import Manifest, model_latents
from training.export import export_checkpoint
from training.families import biggan, progan

FAMILIES = {
    "progan": (progan, progan.ProGANConfig(image_size=16, nz=8, embed_dim=4, widths=(8, 8, 4))),
    "biggan": (
        biggan,
        biggan.BigGANConfig(
            image_size=16, nz=12, shared_dim=4, g_widths=(8, 8, 8), d_widths=(8, 8, 8)
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_checkpoint_exports_with_parity_and_the_served_latent_rule(tmp_path, name) -> None:
    module, cfg = FAMILIES[name]
    torch.manual_seed(0)
    g, _ = module.build_models(cfg)
    if name == "biggan":  # non-trivial BatchNorm statistics, as after training
        g.train()
        with torch.no_grad():
            for _ in range(3):
                g(torch.randn(16, cfg.nz) * 2, torch.randint(0, 10, (16,)))
    ckpt = {
        "family": name,
        "model_config": cfg.to_dict(),
        "generator": g.state_dict(),
        "generator_ema": g.state_dict(),
        "class_names": [str(i) for i in range(10)],
        "epoch": 1,
        "step": 1,
        "history": [],
        "elapsed_s": 1.0,
    }
    path = tmp_path / "last.pt"
    torch.save(ckpt, path)
    version_dir = export_checkpoint(path, tmp_path / "store", f"tiny-{name}")
    m = Manifest.load(version_dir)
    assert m.family == name and m.paper == module.PAPER and m.truncation == module.TRUNCATION
    assert m.training["export"]["parity_max_abs_diff"] <= 1
    assert [t.name for t in m.inputs] == ["z", "label"] and m.outputs[0].shape == [-1, 16, 16, 1]

    seeds, labels = list(range(20)), np.arange(20) % 10
    z = model_latents(m, seeds)
    if m.truncation is not None:
        assert np.abs(z).max() <= m.truncation.threshold
    session = ort.InferenceSession(str(m.onnx_path(version_dir)))
    (served,) = session.run(["image"], {"z": z, "label": labels})
    g.eval()
    with torch.no_grad():
        pixels = (g(torch.from_numpy(z), torch.from_numpy(labels)) + 1) * 127.5
    expected = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
    with LocalGenerator(version_dir) as local:  # ganclient --local draws by the same rule
        np.testing.assert_array_equal(local.generate_seeds(seeds, labels), served)
