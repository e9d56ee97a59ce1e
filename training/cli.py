"""``gan-train``: one command line for the offline half (train, evaluate, export, mar, ship).

Each subcommand lives in its own module, imported only when asked for, so ``gan-train train``
never loads onnxruntime and ``gan-train export`` never loads the training loop. A module
provides ``configure_parser(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module under training/, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a DCGAN (embedded MNIST or an image folder)"),
    "evaluate": ("evaluate", "score a generator against held-out real digits"),
    "export": ("export", "export a checkpoint's generator to ONNX in the model store"),
    "mar": ("torchserve_archive", "build a TorchServe archive (.mar) of an exported model"),
    "ship": ("ship", "train, export, evaluate and archive the shipped model"),
}


def _command_from(argv: Sequence[str]) -> str | None:
    """The first positional argument, if it names a subcommand."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """A parser whose only fully configured subcommand is the one on the command line."""
    parser = argparse.ArgumentParser(prog="gan-train", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _command_from(argv)
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        try:
            module = importlib.import_module(f"training.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"training.{module_name}", module_name):
                raise SystemExit(
                    f"gan-train {name}: missing dependency '{exc.name}'; "
                    "install the training extra: pip install -e '.[train]'"
                ) from exc
            raise SystemExit(
                f"gan-train {name}: this installation has no module training.{module_name}; "
                "reinstall gan-serve from a complete checkout"
            ) from exc
        module.configure_parser(sub)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
