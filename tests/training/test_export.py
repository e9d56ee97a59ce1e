"""ONNX export: graph contract, BatchNorm folding, parity gate and atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from service.manifest import Manifest, latents_from_seeds, version_dirs
from training import export as export_mod
from training.export import (
    ExportParityError,
    export_generator,
    export_random_generator,
    fold_batchnorm,
    tanh_to_uint8,
)
from training.model import ModelConfig, build_models

TINY = dict(image_size=16, ngf=8, nz=8, embed_dim=4)


def _generator_with_bn_stats(cfg: ModelConfig, seed: int = 0):
    """A generator whose BatchNorm layers carry non-trivial running statistics."""
    torch.manual_seed(seed)
    generator, _ = build_models(cfg)
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.3, 2.0)
            module.bias.data.uniform_(-0.2, 0.2)
    return generator.eval()


def _run(version_dir: Path, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    session = ort.InferenceSession(
        str(version_dir / "generator.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = {"z": z}
    if labels is not None:
        feeds["label"] = labels
    return session.run(["image"], feeds)[0]


def test_fold_batchnorm_matches_unfolded_generator():
    cfg = ModelConfig(num_classes=10, **TINY)
    generator = _generator_with_bn_stats(cfg)
    folded = fold_batchnorm(generator)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    z, labels = torch.randn(16, cfg.nz), torch.arange(16) % 10
    with torch.no_grad():
        torch.testing.assert_close(folded(z, labels), generator(z, labels), atol=1e-5, rtol=1e-4)


def test_tanh_to_uint8_rounds_clamps_and_goes_channels_last():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6)
    out = tanh_to_uint8(x.expand(1, 3, 1, 6).contiguous())
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255]


def test_conditional_export_contract_and_parity(tmp_path: Path):
    cfg = ModelConfig(num_classes=10, **TINY)
    generator = _generator_with_bn_stats(cfg)
    names = [f"digit-{i}" for i in range(10)]
    out = export_generator(
        generator, cfg, tmp_path, "tiny-c", class_names=names, training={"epochs": 3}
    )
    assert out == tmp_path / "tiny-c" / "1"
    manifest = Manifest.load(out)
    manifest.verify_artifact(out)
    assert manifest.conditional and manifest.class_names == names
    assert [s.name for s in manifest.inputs] == ["z", "label"]
    assert manifest.outputs[0].shape == [-1, 16, 16, 1]
    assert manifest.training["epochs"] == 3
    assert manifest.training["model_config"]["nz"] == 8
    assert manifest.artifact.opset >= 17

    graph = onnx.load(str(out / "generator.onnx"))
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}
    assert [i.name for i in graph.graph.input] == ["z", "label"]

    # Dynamic batch axis, and the same pixels as PyTorch for seeded latents.
    for n in (1, 7):
        z = latents_from_seeds(list(range(n)), cfg.nz)
        labels = np.arange(n, dtype=np.int64) % 10
        images = _run(out, z, labels)
        assert images.dtype == np.uint8 and images.shape == (n, 16, 16, 1)
        with torch.no_grad():
            expected = tanh_to_uint8(generator(torch.from_numpy(z), torch.from_numpy(labels)))
        assert np.abs(images.astype(int) - expected.numpy().astype(int)).max() <= 1

    # Labels change the picture: conditioning survived the export.
    z = np.repeat(latents_from_seeds([3], cfg.nz), 2, axis=0)
    pair = _run(out, z, np.array([0, 1], dtype=np.int64))
    assert not np.array_equal(pair[0], pair[1])

    # Next export gets the next version.
    assert export_generator(generator, cfg, tmp_path, "tiny-c").name == "2"


def test_unconditional_rgb_export(tmp_path: Path):
    cfg = ModelConfig(channels=3, **TINY)
    out = export_generator(_generator_with_bn_stats(cfg), cfg, tmp_path, "tiny-u", version=5)
    manifest = Manifest.load(out)
    assert out.name == "5" and not manifest.conditional
    assert [s.name for s in manifest.inputs] == ["z"]
    images = _run(out, latents_from_seeds([1, 2], cfg.nz))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 0


def test_parity_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = ModelConfig(num_classes=10, **TINY)
    generator = _generator_with_bn_stats(cfg)
    real_fold = export_mod.fold_batchnorm

    def broken_fold(g):
        folded = real_fold(g)
        with torch.no_grad():
            folded.main[0].bias.add_(5.0)  # a wrong fold: the graph no longer matches G
        return folded

    monkeypatch.setattr(export_mod, "fold_batchnorm", broken_fold)
    with pytest.raises(ExportParityError, match="intensity levels"):
        export_generator(generator, cfg, tmp_path, "bad")
    model_dir = tmp_path / "bad"
    assert version_dirs(model_dir) == {}
    assert list(model_dir.iterdir()) == []  # no temp directory left behind either


def test_existing_version_is_never_overwritten(tmp_path: Path):
    cfg = ModelConfig(**TINY)
    first = export_random_generator(tmp_path, "rnd", cfg, seed=1)
    sha = Manifest.load(first).artifact.sha256
    with pytest.raises(FileExistsError):
        export_random_generator(tmp_path, "rnd", cfg, seed=2, version=1)
    assert Manifest.load(first).artifact.sha256 == sha


def test_random_generator_is_deterministic_per_seed(tmp_path: Path):
    cfg = ModelConfig(num_classes=10, **TINY)
    a = export_random_generator(tmp_path, "a", cfg, seed=3)
    b = export_random_generator(tmp_path, "b", cfg, seed=3)
    c = export_random_generator(tmp_path, "c", cfg, seed=4)
    z = latents_from_seeds([10, 11], cfg.nz)
    labels = np.array([2, 5], dtype=np.int64)
    assert np.array_equal(_run(a, z, labels), _run(b, z, labels))
    assert not np.array_equal(_run(a, z, labels), _run(c, z, labels))


def _write_checkpoint(path: Path, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """A checkpoint in the training loop's format whose EMA weights differ from the raw ones."""
    from training.checkpoint import save_checkpoint

    raw = _generator_with_bn_stats(cfg, seed=1)
    ema = _generator_with_bn_stats(cfg, seed=2)
    save_checkpoint(
        path,
        {
            "model_config": cfg.to_dict(),
            "train_config": {"epochs": 1, "out_dir": "runs/x"},
            "generator": raw.state_dict(),
            "generator_ema": ema.state_dict(),
            "epoch": 1,
            "step": 10,
            "class_names": [str(i) for i in range(cfg.num_classes)],
            "history": [{"epoch": 1, "loss_g": 1.5, "loss_d": 0.9}],
            "elapsed_s": 12.5,
        },
    )
    return raw, ema


def test_export_checkpoint_uses_ema_weights_and_records_training(tmp_path: Path):
    from training.cli import main

    cfg = ModelConfig(num_classes=10, **TINY)
    ckpt = tmp_path / "last.pt"
    raw, ema = _write_checkpoint(ckpt, cfg)
    assert main(["export", str(ckpt), "--store", str(tmp_path / "store"), "--name", "ck"]) == 0
    out = tmp_path / "store" / "ck" / "1"
    m = Manifest.load(out)
    assert m.training["weights"] == "ema" and m.training["epochs"] == 1
    assert m.training["elapsed_s"] == 12.5
    assert m.training["train_config"]["out_dir"] == "runs/x"
    z = latents_from_seeds([1, 2, 3], cfg.nz)
    labels = np.array([0, 4, 9], dtype=np.int64)
    with torch.no_grad():
        expected = tanh_to_uint8(ema(torch.from_numpy(z), torch.from_numpy(labels))).numpy()
        raw_px = tanh_to_uint8(raw(torch.from_numpy(z), torch.from_numpy(labels))).numpy()
    got = _run(out, z, labels)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - raw_px.astype(int)).max() > 1


@pytest.mark.slow
def test_ship_from_checkpoint_exports_evaluates_and_archives(tmp_path: Path):
    from training.cli import main
    from training.ship import ship
    from training.torchserve_archive import mar_contents

    assert main(["ship", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    cfg = ModelConfig(num_classes=10, image_size=32, ngf=8, nz=16, embed_dim=4)
    ckpt = tmp_path / "last.pt"
    _write_checkpoint(ckpt, cfg)
    store = tmp_path / "store"
    version_dir, result = ship(
        store=store,
        name="tiny-ship",
        checkpoint=ckpt,
        train_command="gan-train train --epochs 1",
        train_wall_time_s=12.34,
        samples=500,
        fid_samples=200,
        cas_samples=200,
    )
    assert version_dir == store / "tiny-ship" / "1"
    m = Manifest.load(version_dir)
    m.verify_artifact(version_dir)
    assert m.training["command"] == "gan-train train --epochs 1"
    assert m.training["wall_time_s"] == 12.3
    assert m.evaluation == result and result["meets_targets"] is False
    assert (version_dir / "report.md").is_file() and (version_dir / "samples.png").is_file()
    assert "generator.onnx" in mar_contents(store / "tiny-ship.mar")
