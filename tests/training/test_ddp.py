"""DistributedDataParallel: two CPU processes under torchrun with the gloo backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += ["-m", "training", "train", "--out-dir", str(out), "--device", "cpu"]
    cmd += ["--image-size", "16", "--nz", "8", "--ngf", "8", "--ndf", "8", "--batch-size", "16"]
    cmd += ["--epochs", "2", "--steps-per-epoch", "3", "--no-progress", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]

    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["train_config"]["world_size"] == 2
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    assert len(ckpt["rng"]["per_rank"]) == 2  # every rank's RNG, so --resume can continue
    # the two ranks draw different noise: their RNG states differ
    first, second = (state["torch"] for state in ckpt["rng"]["per_rank"])
    assert not torch.equal(first, second)
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    # rank 0 alone writes files, and prints the checkpoint path once
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert done.stdout.count("last.pt") == 1
    assert (out / "loss_curve.png").is_file()
