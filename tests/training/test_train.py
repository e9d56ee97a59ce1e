"""The training loop: a tiny run's outputs, determinism, bitwise resume, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from training import cli
from training.checkpoint import generator_from_checkpoint, load_checkpoint
from training.data import ImageData
from training.loop import Trainer, train
from training.model import Generator

CHECKPOINT_KEYS = {
    "model_config",
    "train_config",
    "generator",
    "generator_ema",
    "discriminator",
    "opt_g",
    "opt_d",
    "epoch",
    "step",
    "class_names",
    "history",
    "rng",
    "elapsed_s",
}


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):  # type: ignore[call-overload]
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _model_state(ckpt: dict) -> dict:
    keys = ("generator", "generator_ema", "discriminator", "opt_g", "opt_d", "epoch", "step")
    return {k: ckpt[k] for k in keys}


def test_one_epoch_writes_checkpoint_grid_metrics_and_curve(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    cfg = make_config(tmp_path / "run")
    path = train(cfg, tiny_mnist)
    assert path == tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    assert CHECKPOINT_KEYS <= ckpt.keys()
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3
    assert ckpt["class_names"] == [str(d) for d in range(10)]
    assert ckpt["model_config"]["num_classes"] == 10 and ckpt["model_config"]["image_size"] == 16
    assert ckpt["train_config"]["seed"] == 7 and ckpt["elapsed_s"] > 0
    (row,) = ckpt["history"]
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s"):
        assert row[key] > 0, key
    assert 0 < row["d_real"] < 1 and 0 < row["d_fake"] < 1

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ckpt["history"]

    grid = Image.open(tmp_path / "run" / "samples" / "epoch_001.png")
    # one row per class, 10 seeds per row, 16 px images, 2 px gaps, upscaled 2x
    assert grid.size == (2 * (10 * 18 + 2), 2 * (10 * 18 + 2)) and grid.mode == "L"
    curve = Image.open(tmp_path / "run" / "loss_curve.png")
    assert curve.size[0] > 300 and curve.size[1] > 200


def test_generator_from_checkpoint_uses_ema_when_asked(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    path = train(make_config(tmp_path / "run"), tiny_mnist)
    g_ema, cfg, ckpt = generator_from_checkpoint(path)
    g_raw, _, _ = generator_from_checkpoint(path, use_ema=False)
    assert isinstance(g_ema, Generator) and not g_ema.training
    assert cfg.nz == 8 and cfg.num_classes == 10
    for name, tensor in g_ema.state_dict().items():
        assert torch.equal(tensor, ckpt["generator_ema"][name])
    z = torch.randn(4, cfg.nz)
    labels = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        out_ema, out_raw = g_ema(z, labels), g_raw(z, labels)
    assert out_ema.shape == (4, 1, 16, 16)
    assert out_ema.abs().max() <= 1.0
    assert not torch.equal(out_ema, out_raw)  # the EMA copy is a different generator


def test_same_seed_gives_identical_weights(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    a = load_checkpoint(train(make_config(tmp_path / "a", steps_per_epoch=2), tiny_mnist))
    b = load_checkpoint(train(make_config(tmp_path / "b", steps_per_epoch=2), tiny_mnist))
    c = load_checkpoint(train(make_config(tmp_path / "c", steps_per_epoch=2, seed=8), tiny_mnist))
    _assert_same_tensors(_model_state(a), _model_state(b))
    assert not torch.equal(a["generator"]["main.0.weight"], c["generator"]["main.0.weight"])


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    straight = load_checkpoint(train(make_config(tmp_path / "straight", epochs=2), tiny_mnist))
    train(make_config(tmp_path / "split", epochs=1), tiny_mnist)
    resumed = load_checkpoint(
        train(make_config(tmp_path / "split", epochs=2, resume=True), tiny_mnist)
    )
    assert straight["epoch"] == resumed["epoch"] == 2
    assert straight["step"] == resumed["step"] == 6
    _assert_same_tensors(_model_state(straight), _model_state(resumed))
    assert [h["loss_d"] for h in straight["history"]] == [h["loss_d"] for h in resumed["history"]]
    assert sorted(p.name for p in (tmp_path / "split" / "samples").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
    ]


def test_learning_rates_decay_linearly_and_resume_across_the_decay(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    """--lr-decay-start 0.5 over 4 epochs: full lr for epochs 1-3 (the decay starts at epoch
    3 from 1.0), half in epoch 4; a run stopped inside the decay and resumed matches an
    unbroken one (the schedule follows --epochs, so a resume must keep it)."""

    def cfg(out: str, **kw: object):
        return make_config(tmp_path / out, lr_decay_start=0.5, steps_per_epoch=1, **kw)

    straight = load_checkpoint(train(cfg("straight", epochs=4), tiny_mnist))
    base = straight["train_config"]["lr"]
    assert [g["lr"] for g in straight["opt_g"]["param_groups"]] == [base * 0.5]
    assert [g["lr"] for g in straight["opt_d"]["param_groups"]] == [base * 0.5]
    interrupted = Trainer(cfg("split", epochs=4), tiny_mnist)  # stopped after 3 of 4 epochs
    for _ in range(3):
        interrupted.end_epoch(interrupted.train_epoch())
    resumed = load_checkpoint(train(cfg("split", epochs=4, resume=True), tiny_mnist))
    _assert_same_tensors(_model_state(straight), _model_state(resumed))
    constant = load_checkpoint(
        train(make_config(tmp_path / "c", epochs=4, steps_per_epoch=1), tiny_mnist)
    )
    assert [g["lr"] for g in constant["opt_g"]["param_groups"]] == [base]


def test_resume_refuses_a_missing_or_different_checkpoint(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_config(tmp_path / "empty", resume=True), tiny_mnist)
    train(make_config(tmp_path / "run"), tiny_mnist)
    with pytest.raises(ValueError, match="same model options"):
        Trainer(make_config(tmp_path / "run", ngf=16, resume=True), tiny_mnist)


def test_unconditional_rgb_folder_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        pixels = torch.randint(0, 256, (24, 24, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:02d}.png")
    out = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--out-dir", str(out), "--image-size", "16"]
    argv += ["--ngf", "8", "--ndf", "8", "--nz", "4", "--batch-size", "8", "--epochs", "1"]
    argv += ["--no-progress", "--ema-decay", "0"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "checkpoints" / "last.pt")
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["model_config"]["num_classes"] == 0 and ckpt["model_config"]["channels"] == 3
    assert ckpt["generator_ema"] is None and ckpt["class_names"] == []
    assert ckpt["step"] == 2  # 20 images, batches of 8, last partial batch dropped
    grid = Image.open(out / "samples" / "epoch_001.png")
    assert grid.mode == "RGB" and grid.size == (2 * (8 * 18 + 2), 2 * (8 * 18 + 2))


def test_command_line_reports_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli.main(["train", "--data", str(empty), "--out-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and str(empty) in err and "is empty" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_command_line_names_a_missing_subcommand_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.SUBCOMMANDS, "evaluate", ("no_such_module", "help"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate"])
    assert "training.no_such_module" in str(exc.value)


def test_python_dash_m_training_lists_the_subcommands() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("train", "evaluate", "export", "mar", "ship"):
        assert name in done.stdout


def test_mode_seeking_term_rewards_latent_sensitivity() -> None:
    from training.families.dcgan import mode_seeking_loss

    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    same = torch.zeros(8, 1, 4, 4)  # every latent gives the same image: collapse
    varied = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert mode_seeking_loss(varied, z, 4) < mode_seeking_loss(same, z, 4)


def test_mode_seeking_changes_training_and_keeps_pairs_labelled(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    plain = load_checkpoint(train(make_config(tmp_path / "plain", mode_seeking=0.0), tiny_mnist))
    seeking = load_checkpoint(train(make_config(tmp_path / "ms", mode_seeking=1.0), tiny_mnist))
    assert seeking["train_config"]["mode_seeking"] == 1.0
    assert not torch.equal(
        plain["generator"]["main.0.weight"], seeking["generator"]["main.0.weight"]
    )
