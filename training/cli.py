"""``gan-train``: one command line for the offline half (train, evaluate, export, mar, ship).

Each subcommand lives in its own module, imported only when asked for, so ``gan-train train``
never loads onnxruntime and ``gan-train export`` never loads the training loop. A module
provides ``configure_parser(parser)`` and ``run(args) -> int``.

A user's mistake (a missing file, a file that is not a checkpoint, a store without the model)
ends in one line naming the problem and the fix, with exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# subcommand -> (module under training/, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a GAN (embedded MNIST or an image folder)"),
    "evaluate": ("evaluate", "score a generator against held-out real digits"),
    "export": ("export", "export a checkpoint's generator to ONNX in the model store"),
    "mar": ("torchserve_archive", "build a TorchServe archive (.mar) of an exported model"),
    "ship": ("ship", "train, export, evaluate and archive the shipped model"),
    "cyclegan": ("cyclegan_train", "train a CycleGAN on two unpaired image domains"),
    "export-translator": ("cyclegan_export", "export a CycleGAN checkpoint to the model store"),
    "stackgan": ("stackgan_train", "train a text-to-image StackGAN on captioned digits, export it"),
}
USAGE_ERROR = 2
# What a user's mistake raises: bad paths, files of the wrong kind, invalid options.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)
# Set to 1 to see the traceback behind a one-line error.
TRACEBACK_ENV = "GAN_TRAIN_TRACEBACK"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option's help (``none`` for an option that is unset
    unless given), except flags that are off by default and options whose help already says
    what their default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if action.default is None:
            return f"{text} (default: none)" if action.option_strings else text
        return super()._get_help_string(action) or text


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
        sub = subparsers.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
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


def model_name(text: str) -> str:
    """argparse type of every ``--name``: the store's model name rule, checked before a run
    starts rather than when its export writes the manifest."""
    from service.manifest import valid_name

    if not valid_name(text):
        raise argparse.ArgumentTypeError(
            f"invalid model name {text!r}: use 1-63 lower-case letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return text


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none); for a
    pydantic validation error, its first error with the field it concerns and the value."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "value"
        return f"{where}: {first.get('msg', '')} (got {first.get('input')!r})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args))
    except USER_ERRORS as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"gan-train {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
