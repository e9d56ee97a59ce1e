"""Build a TorchServe archive (``model_store/<name>.mar``) from an exported version directory
(``gan-train mar``).

The archive holds the ONNX graph, its manifest, the handler and a copy of the model contract
module; no torch model file is needed because the handler runs the graph with ONNX Runtime.
A text-to-image model's archive adds its side files (the vocabulary) and a copy of the
tokenizer, ``service/text.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import service.manifest as contract
import service.text as tokenizer
from service.manifest import MANIFEST_FILE, Manifest

HANDLER_SOURCE = Path(__file__).with_name("torchserve_handler.py")
HANDLER_FILE = "torchserve_handler.py"
CONTRACT_FILE = "manifest.py"
TOKENIZER_FILE = "text.py"


def _archiver_command() -> list[str]:
    exe = shutil.which("torch-model-archiver")
    if exe:
        return [exe]
    return [
        sys.executable,
        "-c",
        "from model_archiver.model_packaging import generate_model_archive as g; g()",
    ]


def build_mar(version_dir: str | Path, out_path: str | Path) -> Path:
    """Archive ``version_dir`` (generator.onnx + manifest.json) into ``out_path`` (.mar).

    The model's name inside TorchServe is the manifest's name; its version, the manifest's.
    """
    version_dir = Path(version_dir)
    out_path = Path(out_path)
    manifest = Manifest.load(version_dir)
    if manifest.translates:
        raise ValueError(
            f"{version_dir} holds an image-to-image model; the TorchServe handler serves "
            "noise- and text-to-image generators only (serve it with gan-serve's translate "
            "route)"
        )
    manifest.verify_artifact(version_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        stage = Path(tmp)
        shutil.copy2(HANDLER_SOURCE, stage / HANDLER_FILE)
        shutil.copy2(contract.__file__, stage / CONTRACT_FILE)
        shutil.copy2(version_dir / MANIFEST_FILE, stage / MANIFEST_FILE)
        extra = [stage / MANIFEST_FILE, stage / CONTRACT_FILE]
        if manifest.takes_text:
            shutil.copy2(tokenizer.__file__, stage / TOKENIZER_FILE)
            extra.append(stage / TOKENIZER_FILE)
        for side in manifest.side_files:
            shutil.copy2(version_dir / side.file, stage / side.file)
            extra.append(stage / side.file)
        export_dir = stage / "export"
        export_dir.mkdir()
        cmd = _archiver_command() + [
            "--model-name",
            manifest.name,
            "--version",
            str(manifest.version),
            "--serialized-file",
            str(manifest.onnx_path(version_dir)),
            "--handler",
            str(stage / HANDLER_FILE),
            "--extra-files",
            ",".join(str(path) for path in extra),
            "--export-path",
            str(export_dir),
            "--force",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        built = export_dir / f"{manifest.name}.mar"
        if proc.returncode != 0 or not built.is_file():
            raise RuntimeError(
                f"torch-model-archiver failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        tmp_out = out_path.with_name(f".{out_path.name}.tmp")
        shutil.move(str(built), tmp_out)
        tmp_out.replace(out_path)
    return out_path


def mar_contents(path: str | Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


# --- command line: gan-train mar -------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        nargs="?",
        default=Path("model_store/mnist-cdcgan"),
        help="version directory, or model directory (its highest version is used)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="archive path (default: <model store>/<name>.mar beside the model)",
    )


def run(args: argparse.Namespace) -> int:
    from training.evaluate import load_manifest, resolve_version_dir

    version_dir = resolve_version_dir(args.model)
    name = load_manifest(version_dir).name
    out = args.out or version_dir.parent.parent / f"{name}.mar"
    build_mar(version_dir, out)
    print(f"wrote {out}")
    return 0
