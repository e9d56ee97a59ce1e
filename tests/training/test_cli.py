"""``gan-train`` as a user meets it: names never taken over, runs never overwritten by surprise,
one-line errors with exit status 2, and every option's default in ``--help``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.manifest import Manifest, version_dirs
from training import cli
from training.checkpoint import load_checkpoint
from training.data import ImageData
from training.loop import RunExistsError, train
from training.model import IMAGE_SIZE_HELP

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, tiny_mnist: ImageData, make_config, **overrides) -> Path:
    """A tiny finished run under tmp_path/<name>; returns its last.pt."""
    return train(make_config(tmp_path / name, **overrides), tiny_mnist)


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gan-train {command}: error: ") and "Traceback" not in err
    return err


# --- export: a model's name is never taken over ----------------------------------------------


def test_export_takes_the_name_of_the_run_folder(
    tmp_path: Path, tiny_mnist: ImageData, make_config, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _run(tmp_path, "Pets Run", tiny_mnist, make_config)
    store = tmp_path / "store"
    assert cli.main(["export", str(ckpt), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert list(version_dirs(store / "pets-run")) == [1]
    assert "serves model 'pets-run' version 1" in out


def test_export_refuses_a_name_another_run_trained_unless_forced(
    tmp_path: Path, tiny_mnist: ImageData, make_config, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _run(tmp_path, "first", tiny_mnist, make_config)
    second = _run(tmp_path, "second", tiny_mnist, make_config, seed=8)
    store = str(tmp_path / "store")
    assert cli.main(["export", str(first), "--store", store, "--name", "digits"]) == 0
    assert cli.main(["export", str(first), "--store", store, "--name", "digits"]) == 0  # same run
    capsys.readouterr()

    assert cli.main(["export", str(second), "--store", store, "--name", "digits"]) == 2
    err = _one_error_line(capsys, "export")
    assert "--name NEW" in err and "--force" in err and "version 3" in err
    assert list(version_dirs(tmp_path / "store" / "digits")) == [1, 2]

    argv = ["export", str(second), "--store", store, "--name", "digits", "--force"]
    assert cli.main(argv) == 0
    assert "version 3" in capsys.readouterr().out
    m = Manifest.load(tmp_path / "store" / "digits" / "3")
    assert m.training["checkpoint"] == str(second)


# --- train: an existing run is continued or restarted only when asked ------------------------


def test_train_refuses_an_existing_run_and_force_starts_over(
    tmp_path: Path, tiny_mnist: ImageData, make_config
) -> None:
    _run(tmp_path, "run", tiny_mnist, make_config, epochs=2)
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume.*--force"):
        _run(tmp_path, "run", tiny_mnist, make_config)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before

    (tmp_path / "run" / "notes.txt").write_text("mine")
    ckpt = load_checkpoint(_run(tmp_path, "run", tiny_mnist, make_config, force=True))
    assert ckpt["epoch"] == 1
    samples = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert samples == ["epoch_001.png"]  # the old run's epoch_002.png is gone
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the run's outputs


def test_resume_of_a_finished_run_says_there_is_nothing_left(
    tmp_path: Path, tiny_mnist: ImageData, make_config, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _run(tmp_path, "run", tiny_mnist, make_config)
    before = path.read_bytes()
    capsys.readouterr()
    assert _run(tmp_path, "run", tiny_mnist, make_config, resume=True) == path
    assert "nothing left to do" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_train_command_line_refuses_an_existing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    assert cli.main(["train", "--out-dir", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert "already holds a training run" in _one_error_line(capsys, "train")


# --- errors: one line, exit status 2 -----------------------------------------------------------


def test_user_mistakes_end_in_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    assert cli.main(["export", str(missing), "--name", "x"]) == 2
    assert "does not exist" in _one_error_line(capsys, "export")

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    assert cli.main(["export", str(not_a_checkpoint), "--name", "x"]) == 2
    assert "not a gan-train checkpoint" in _one_error_line(capsys, "export")

    assert cli.main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in _one_error_line(capsys, "evaluate")

    assert cli.main(["evaluate", str(REPO / "model_store")]) == 2
    assert "is a model store, not a model" in _one_error_line(capsys, "evaluate")

    bad = tmp_path / "store" / "bad" / "1"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text('{"name": "bad"}')
    assert cli.main(["mar", str(bad)]) == 2
    assert "not a valid manifest" in _one_error_line(capsys, "mar")

    assert cli.main(["ship", "--checkpoint", str(missing)]) == 2
    assert "does not exist" in _one_error_line(capsys, "ship")


@pytest.mark.parametrize("command", ["cyclegan", "export-translator", "export", "ship", "stackgan"])
def test_a_bad_model_name_is_refused_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ``--name`` follows the store's rule when parsed, so a training run cannot
    spend minutes and then fail to export under a name the manifest refuses."""
    args = [command] + (["checkpoint.pt"] if command.startswith("export") else [])
    with pytest.raises(SystemExit) as stop:
        cli.main([*args, "--name", "Digits-V2", "--store", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid model name 'Digits-V2'" in err and "lower-case" in err
    assert not any(tmp_path.iterdir())


def test_a_manifest_validation_error_names_its_field() -> None:
    """A pydantic error's one line says which field and value, not only how many errors."""
    from pydantic import ValidationError

    from service.manifest import Manifest

    with pytest.raises(ValidationError) as caught:
        Manifest.model_validate({"name": "Bad Name"})
    line = cli.one_line(caught.value)
    assert "validation error" not in line
    assert line.startswith("name: ") and "'Bad Name'" in line


# --- help: every default shown ---------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_help_shows_every_default(command: str) -> None:
    parser, _ = cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        command
    ]
    formatter = sub._get_formatter()
    assert isinstance(formatter, cli.HelpFormatter)
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or action.default is False:
            continue  # help itself, and flags that are off unless given
        if action.required:
            continue  # a required argument has no default
        text = formatter._get_help_string(action)
        assert text and "default" in text, f"{command} {action.dest}: {text!r}"


def test_image_size_help_and_training_doc_agree() -> None:
    parser, _ = cli.build_parser(["train"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "train"
    ]
    assert IMAGE_SIZE_HELP in " ".join(sub.format_help().split())
    doc = " ".join((REPO / "docs" / "TRAINING.md").read_text(encoding="utf-8").split())
    assert IMAGE_SIZE_HELP in doc


def test_cyclegan_options_reach_the_run_config(capsys: pytest.CaptureFixture[str]) -> None:
    """The flag turns the A-cycle recolouring on, the discriminator depth is one of three
    (anything else is a one-line usage error), and checkpoint selection is off by default."""
    from training.cyclegan_train import CycleTrainConfig

    parser, _ = cli.build_parser(["cyclegan"])
    args = parser.parse_args(["cyclegan", "--augment-cycle-a", "--d-downsample", "2"])
    assert args.augment_cycle_a is True and args.d_downsample == 2
    default = parser.parse_args(["cyclegan"])
    assert default.augment_cycle_a is CycleTrainConfig.augment_cycle_a is False
    assert default.d_downsample == CycleTrainConfig.d_downsample == 1
    assert default.select_every == CycleTrainConfig.select_every == 0  # the paper: the last step
    assert default.load_size is CycleTrainConfig.load_size is None  # no scale jitter
    assert default.average_every == CycleTrainConfig.average_every == 0  # no weight averaging
    assert parser.parse_args(["cyclegan", "--load-size", "36"]).load_size == 36
    chosen = parser.parse_args(["cyclegan", "--select-every", "200", "--validation-per-class", "9"])
    assert (chosen.select_every, chosen.validation_per_class) == (200, 9)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["cyclegan", "--d-downsample", "4"])
    assert exc.value.code == 2
    assert "--d-downsample: invalid choice: 4" in capsys.readouterr().err
