"""gan-sample with the in-process ONNX model: each layout, determinism and resuming."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganclient.local import LocalGenerator
from ganclient.sample import main, run_sample


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_imagefolder_is_balanced_deterministic_and_resumes(tiny_store: Path, tmp_path: Path):
    out = tmp_path / "folder"
    args = ["-n", "25", "-o", str(out), "--local", str(tiny_store), "--model", "tiny"]
    assert main([*args, "--seed", "100", "--no-progress"]) == 0
    files = sorted(out.rglob("*.png"))
    assert len(files) == 25
    counts = {d.name: len(list(d.glob("*.png"))) for d in out.iterdir() if d.is_dir()}
    assert counts == {str(c): (3 if c < 5 else 2) for c in range(10)}
    # seed 107 is image 7, so label 7; its pixels match the model run directly
    gen = LocalGenerator(tiny_store, "tiny")
    expected = gen.generate_seeds([107], np.array([7]))[0, :, :, 0]
    assert np.array_equal(read_png(out / "7" / "000000000107.png"), expected)

    # resume: remove two files, rerun, only those come back, identical
    victim = out / "3" / "000000000113.png"
    before = victim.read_bytes()
    victim.unlink()
    (out / "0" / "000000000100.png").unlink()
    stamp = (out / "5" / "000000000105.png").stat().st_mtime_ns
    result = subprocess.run(
        [sys.executable, "-m", "ganclient", *args, "--seed", "100"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 2 images, 23 already there" in result.stdout
    assert "25/25" in result.stderr  # the progress bar starts at what already exists
    assert victim.read_bytes() == before
    assert (out / "5" / "000000000105.png").stat().st_mtime_ns == stamp

    # a different run into the same folder is refused
    assert main([*args, "--seed", "5", "--no-progress"]) == 2
    assert len(list(out.rglob("*.png"))) == 25


def test_given_labels_and_webdataset_shards_resume(tiny_store: Path, tmp_path: Path):
    out = tmp_path / "wds"
    args = ["-n", "10", "-o", str(out), "--local", str(tiny_store), "--model", "tiny"]
    args += ["--layout", "webdataset", "--shard-size", "4", "--labels", "2,9", "--no-progress"]
    assert main(args) == 0
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == [f"shard-00000{k}.tar" for k in range(3)]
    with tarfile.open(shards[2]) as tar:
        names = tar.getnames()
        assert names == [f"{k:012d}.{ext}" for k in (8, 9) for ext in ("png", "cls", "json")]
        assert tar.extractfile("000000000009.cls").read() == b"9"
        assert json.loads(tar.extractfile("000000000008.json").read())["label"] == 2
    first = shards[0].read_bytes()
    shards[1].unlink()
    stamp = shards[0].stat().st_mtime_ns
    assert main(args) == 0
    assert shards[1].is_file() and shards[0].stat().st_mtime_ns == stamp
    assert shards[0].read_bytes() == first


def test_npz_matches_model_and_resumes_from_parts(tiny_store: Path, tmp_path: Path):
    out = tmp_path / "set.npz"
    args = ["-n", "7", "-o", str(out), "--local", str(tiny_store), "--model", "tiny"]
    args += ["--layout", "npz", "--chunk-size", "3", "--seed", "40", "--no-progress"]
    assert main(args) == 0
    with np.load(out) as data:
        images, seeds, labels = data["images"], data["seeds"], data["labels"]
    assert images.shape == (7, 8, 8, 1) and images.dtype == np.uint8
    assert seeds.tolist() == list(range(40, 47)) and labels.tolist() == list(range(7))
    gen = LocalGenerator(tiny_store, "tiny")
    assert np.array_equal(images, gen.generate_seeds(seeds.tolist(), labels))

    # an interrupted run leaves finished chunks in set.npz.parts; the rerun reuses them
    other = tmp_path / "cut.npz"
    flaky = CountingSource(gen, fail_on_call=2)
    with pytest.raises(RuntimeError, match="cut off"):
        run_sample(flaky, other, 7, layout="npz", base_seed=40, chunk_size=3)
    assert not other.exists() and len(list(other.with_name("cut.npz.parts").glob("*.npy"))) == 1
    steady = CountingSource(gen)
    report = run_sample(steady, other, 7, layout="npz", base_seed=40, chunk_size=3)
    assert (report.written, report.skipped, steady.images) == (4, 3, 4)
    assert not other.with_name("cut.npz.parts").exists()
    with np.load(other) as again:
        assert np.array_equal(again["images"], images)
    # finished: a third run writes nothing
    assert run_sample(CountingSource(gen), other, 7, layout="npz", base_seed=40).written == 0


class CountingSource:
    """Wraps a generator; counts images made and can fail on the k-th call."""

    def __init__(self, inner: LocalGenerator, fail_on_call: int | None = None):
        self.inner, self.fail_on_call, self.calls, self.images = inner, fail_on_call, 0, 0

    def info(self):
        return self.inner.info()

    def generate_seeds(self, seeds, labels, **kw):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("cut off")
        self.images += len(seeds)
        return self.inner.generate_seeds(seeds, labels, **kw)


def test_unconditional_model_and_bad_labels(tiny_store: Path, tmp_path: Path):
    out = tmp_path / "plain"
    assert (
        main(
            [
                "-n",
                "3",
                "-o",
                str(out),
                "--local",
                str(tiny_store),
                "--model",
                "plain",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(list((out / "all").glob("*.png"))) == 3
    bad = ["-n", "3", "-o", str(tmp_path / "x"), "--local", str(tiny_store), "--model", "tiny"]
    assert main([*bad, "--labels", "12", "--no-progress"]) == 2


def test_remote_sample_equals_local(service, tiny_store: Path, tmp_path: Path):
    common = ["-n", "30", "--model", "tiny", "--layout", "npz", "--seed", "3", "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "remote.npz"), "--url", service.url]) == 0
    assert main([*common, "-o", str(tmp_path / "local.npz"), "--local", str(tiny_store)]) == 0
    with np.load(tmp_path / "remote.npz") as remote, np.load(tmp_path / "local.npz") as local:
        assert np.array_equal(remote["images"], local["images"])
        assert np.array_equal(remote["labels"], local["labels"])
    assert (
        main(
            [
                *common,
                "-o",
                str(tmp_path / "x.npz"),
                "--url",
                "http://127.0.0.1:9",
                "--retries",
                "0",
            ]
        )
        == 2
    )


def test_truncation_is_part_of_the_run(
    service, tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """--truncation reaches the images (remote and local agree), is recorded as part of the
    run (resuming with another psi is refused), and a psi the service refuses is refused."""
    common = ["-n", "12", "--model", "tiny", "--layout", "npz", "--seed", "3", "--no-progress"]
    half = [*common, "--truncation", "0.5"]
    assert main([*half, "-o", str(tmp_path / "remote.npz"), "--url", service.url]) == 0
    assert main([*half, "-o", str(tmp_path / "local.npz"), "--local", str(tiny_store)]) == 0
    assert main([*common, "-o", str(tmp_path / "full.npz"), "--local", str(tiny_store)]) == 0
    with (
        np.load(tmp_path / "remote.npz") as remote,
        np.load(tmp_path / "local.npz") as local,
        np.load(tmp_path / "full.npz") as full,
    ):
        assert np.array_equal(remote["images"], local["images"])
        assert not np.array_equal(local["images"], full["images"])
        assert json.loads(str(local["plan"]))["truncation"] == 0.5
        assert "truncation" not in json.loads(str(full["plan"]))
    folder = ["-n", "4", "-o", str(tmp_path / "tree"), "--local", str(tiny_store), "--model"]
    folder += ["tiny", "--no-progress"]
    assert main([*folder, "--truncation", "0.5"]) == 0
    capsys.readouterr()
    assert main([*folder, "--truncation", "0.7"]) == 2
    assert "truncation" in one_error_line(capsys)
    assert main([*folder, "--truncation", "2"]) == 2
    assert "truncation must be a number between 0 and 1" in one_error_line(capsys)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """gan-sample's stderr: exactly one line, starting ``gan-sample: error:``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gan-sample: error: "), lines
    return lines[0]


def test_usage_errors_are_one_line_naming_the_fix(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = ["-o", str(tmp_path / "x"), "--no-progress"]
    assert main(["-n", "2", *out, "--local", str(tiny_store), "--model", "tny"]) == 2
    line = one_error_line(capsys)
    assert "'tny'" in line and "plain, tiny" in line
    assert main(["-n", "2", *out, "--url", "http://127.0.0.1:9", "--retries", "0"]) == 2
    line = one_error_line(capsys)
    assert "connect" in line and "gan-serve" in line and "--local" in line
    assert main(["-n", "2", *out, "--local", str(tmp_path / "missing")]) == 2
    assert "missing" in one_error_line(capsys)
    for bad, flag in ((["-n", "0"], "--num"), (["-n", "1", "--url", "http://256.0.0.1"], "--url")):
        with pytest.raises(SystemExit) as exit_:
            main([*bad, *out])
        assert exit_.value.code == 2 and flag in one_error_line(capsys)


def test_unknown_remote_model_lists_the_served_ones(
    service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    args = ["-n", "2", "-o", str(tmp_path / "x"), "--url", service.url, "--model", "tny"]
    assert main([*args, "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "'tny'" in line and "plain, tiny" in line
