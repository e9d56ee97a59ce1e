"""``gan-sample``: write N generated images to disk as an ImageFolder tree, WebDataset tar
shards, or one ``.npz``.

Deterministic: image i has seed ``base_seed + i`` and label ``labels[i % len(labels)]``
(all classes in turn by default, so the set is balanced); a text-to-image model's image i
has caption ``captions[i % len(captions)]`` instead (``--text``, repeatable). Resumable:
every file is written under a temporary name and renamed when complete, and a rerun with
the same arguments only produces what is missing. Works against a running service or,
with ``--local``, runs the ONNX model in-process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np

from ganclient.client import GanClient, GanServeError, ModelInfo, check_text, check_truncation

LAYOUTS = ("imagefolder", "webdataset", "npz")
RUN_FILE = ".gan-sample.json"


class SampleConflict(ValueError):
    """The output already holds a run with other arguments; mixing them would corrupt it."""


@dataclass(frozen=True)
class SamplePlan:
    """Which seed and label each of the n images gets; also the identity of a run."""

    model: str
    n: int
    base_seed: int
    labels: list[int] | None  # the cycle of labels; None for an unconditional model
    layout: str
    shard_size: int
    captions: list[str] | None = None  # the cycle of captions of a text-to-image model
    truncation: float | None = None  # psi, as the service's field; None: the model's default

    def record(self) -> dict[str, Any]:
        """The run's identity as written beside its output (no captions or truncation key
        when unset, so runs recorded before they existed still match)."""
        data = asdict(self)
        for key in ("captions", "truncation"):
            if data[key] is None:
                del data[key]
        return data

    def caption(self, i: int) -> str | None:
        return None if self.captions is None else self.captions[i % len(self.captions)]

    def seed(self, i: int) -> int:
        return self.base_seed + i

    def label(self, i: int) -> int | None:
        return None if self.labels is None else self.labels[i % len(self.labels)]

    def label_array(self, indices: Sequence[int]) -> np.ndarray | None:
        if self.labels is None:
            return None
        return np.array([self.labels[i % len(self.labels)] for i in indices], dtype=np.int64)


@dataclass
class SampleReport:
    written: int
    skipped: int
    out: Path


def caption_dir_name(caption: str) -> str:
    """A caption as a folder name: its lower-cased words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", caption.lower()).strip("_") or "caption"


def class_dir_name(label: int | None, num_classes: int) -> str:
    """Zero-padded so that ImageFolder's sorted folder order equals label order."""
    if label is None:
        return "all"
    return str(label).zfill(len(str(max(num_classes - 1, 0))))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    pil = Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to ``<path>.tmp`` then rename, so a half-written file never looks finished."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def check_run(directory: Path, plan: SamplePlan) -> None:
    """Refuse to mix two different runs in one output; record this run otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / RUN_FILE
    wanted = plan.record()
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            raise SampleConflict(
                f"{directory} holds a different sample run ({found}); "
                "use another --out or delete it"
            )
    else:
        record.write_text(json.dumps(wanted, indent=2) + "\n")


class _Progress:
    """tqdm when available and wanted, otherwise silent."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, initial=initial, unit="img", file=sys.stderr)
            except ImportError:
                pass

    def update(self, k: int) -> None:
        if self._bar is not None:
            self._bar.update(k)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _generate(source: Any, plan: SamplePlan, indices: list[int]) -> np.ndarray:
    seeds = [plan.seed(i) for i in indices]
    if plan.captions is not None:
        captions = [plan.caption(i) for i in indices]
        return source.generate_seeds(seeds, None, captions, truncation=plan.truncation)
    return source.generate_seeds(seeds, plan.label_array(indices), truncation=plan.truncation)


def _folder(plan: SamplePlan, i: int, info: ModelInfo) -> str:
    caption = plan.caption(i)
    if caption is not None:
        return caption_dir_name(caption)
    return class_dir_name(plan.label(i), info.num_classes)


def write_imagefolder(
    source: Any, plan: SamplePlan, out: Path, info: ModelInfo, chunk: int, bar: Callable
) -> SampleReport:
    check_run(out, plan)
    paths = [out / _folder(plan, i, info) / f"{plan.seed(i):012d}.png" for i in range(plan.n)]
    missing = [i for i in range(plan.n) if not paths[i].is_file()]
    progress = bar(plan.n, plan.n - len(missing))
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        for i, image in zip(part, _generate(source, plan, part), strict=True):
            paths[i].parent.mkdir(parents=True, exist_ok=True)
            data = png_bytes(image)
            atomic_write(paths[i], lambda p, d=data: p.write_bytes(d))
        progress.update(len(part))
    progress.close()
    if plan.captions is not None:
        folders = {caption_dir_name(c): c for c in plan.captions}
        (out / "captions.json").write_text(json.dumps(folders, indent=1) + "\n")
    if info.conditional:
        names = info.class_names or [str(c) for c in range(info.num_classes)]
        (out / "classes.json").write_text(
            json.dumps({class_dir_name(c, info.num_classes): names[c] for c in set(plan.labels)})
            + "\n"
        )
    return SampleReport(written=len(missing), skipped=plan.n - len(missing), out=out)


def write_webdataset(
    source: Any, plan: SamplePlan, out: Path, info: ModelInfo, chunk: int, bar: Callable
) -> SampleReport:
    """Shards ``shard-000000.tar`` ... with ``<key>.png``, ``<key>.cls`` (or ``<key>.txt``,
    the caption), ``<key>.json``."""
    check_run(out, plan)
    shards = [range(s, min(plan.n, s + plan.shard_size)) for s in range(0, plan.n, plan.shard_size)]
    todo = [k for k in range(len(shards)) if not (out / f"shard-{k:06d}.tar").is_file()]
    done = plan.n - sum(len(shards[k]) for k in todo)
    progress = bar(plan.n, done)
    for k in todo:
        members: list[tuple[str, bytes]] = []
        indices = list(shards[k])
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            for i, image in zip(part, _generate(source, plan, part), strict=True):
                key = f"{plan.seed(i):012d}"
                label = plan.label(i)
                members.append((f"{key}.png", png_bytes(image)))
                if label is not None:
                    members.append((f"{key}.cls", str(label).encode()))
                meta = {"seed": plan.seed(i), "label": label, "model": info.name}
                caption = plan.caption(i)
                if caption is not None:
                    members.append((f"{key}.txt", caption.encode()))
                    meta["text"] = caption
                members.append((f"{key}.json", json.dumps(meta).encode()))
            progress.update(len(part))
        atomic_write(out / f"shard-{k:06d}.tar", lambda p, m=members: _write_tar(p, m))
    progress.close()
    return SampleReport(written=plan.n - done, skipped=done, out=out)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            entry.mode = 0o644
            tar.addfile(entry, io.BytesIO(data))


def write_npz(
    source: Any, plan: SamplePlan, out: Path, info: ModelInfo, chunk: int, bar: Callable
) -> SampleReport:
    """One ``.npz`` with ``images`` uint8 [N,H,W,C], ``seeds`` and ``labels`` int64 [N] (or
    ``captions``, str [N]).
    Finished chunks wait in ``<out>.parts/`` until the last one lands."""
    if out.is_file():
        with np.load(out) as existing:
            if json.loads(str(existing["plan"])) != plan.record():
                raise SampleConflict(f"{out} holds a different sample run; use another --out")
        return SampleReport(written=0, skipped=plan.n, out=out)
    parts_dir = out.with_name(out.name + ".parts")
    check_run(parts_dir, plan)
    starts = list(range(0, plan.n, chunk))
    part_path = {s: parts_dir / f"chunk-{s:012d}.npy" for s in starts}
    todo = [s for s in starts if not part_path[s].is_file()]
    done = plan.n - sum(min(chunk, plan.n - s) for s in todo)
    progress = bar(plan.n, done)
    for s in todo:
        indices = list(range(s, min(plan.n, s + chunk)))
        images = _generate(source, plan, indices)
        atomic_write(part_path[s], lambda p, a=images: _save_npy(p, a))
        progress.update(len(indices))
    progress.close()
    images = np.concatenate([np.load(part_path[s]) for s in starts])
    seeds = np.array([plan.seed(i) for i in range(plan.n)], dtype=np.int64)
    labels = plan.label_array(range(plan.n))
    arrays: dict[str, Any] = {"images": images, "seeds": seeds, "plan": json.dumps(plan.record())}
    if labels is not None:
        arrays["labels"] = labels
    if plan.captions is not None:
        arrays["captions"] = np.array([plan.caption(i) for i in range(plan.n)])
    atomic_write(out, lambda p: _save_npz(p, arrays))
    shutil.rmtree(parts_dir)
    return SampleReport(written=plan.n - done, skipped=done, out=out)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


WRITERS = {"imagefolder": write_imagefolder, "webdataset": write_webdataset, "npz": write_npz}


def run_sample(
    source: Any,
    out: str | Path,
    n: int,
    *,
    layout: str = "imagefolder",
    base_seed: int = 0,
    labels: Sequence[int] | None = None,
    captions: Sequence[str] | None = None,
    truncation: float | None = None,
    chunk_size: int = 256,
    shard_size: int = 1000,
    progress: bool = False,
) -> SampleReport:
    """Write n images from ``source`` (a GanClient or LocalGenerator) to ``out``; a
    text-to-image model needs ``captions`` (used in turn); ``truncation`` is psi."""
    if layout not in WRITERS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if n < 1 or chunk_size < 1 or shard_size < 1:
        raise ValueError("n, chunk_size and shard_size must be >= 1")
    check_truncation(truncation)
    info = source.info()
    check_text(info, list(captions) if captions else None)
    if info.takes_text and labels:
        raise ValueError(f"model {info.name!r} draws from captions; do not pass labels")
    if info.conditional:
        cycle = list(labels) if labels else list(range(info.num_classes))
        bad = [c for c in cycle if not 0 <= c < info.num_classes]
        if bad:
            raise ValueError(f"label {bad[0]} is outside 0..{info.num_classes - 1}")
    elif labels:
        raise ValueError(f"model {info.name!r} is unconditional; do not pass labels")
    else:
        cycle = None
    texts = list(captions) if captions else None
    plan = SamplePlan(info.name, n, base_seed, cycle, layout, shard_size, texts, truncation)
    path = Path(out)
    if layout == "npz" and path.suffix != ".npz":
        path = path.with_suffix(".npz")

    def bar(total: int, initial: int) -> _Progress:
        return _Progress(total, initial, progress)

    return WRITERS[layout](source, plan, path, info, chunk_size, bar)


def parse_labels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"labels must be comma-separated ints: {text}") from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def service_url(text: str) -> str:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return text


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the problem (and ``--help``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="gan-sample",
        description="Write N generated images as an ImageFolder tree, WebDataset shards or .npz.",
    )
    p.add_argument("-n", "--num", type=positive_int, help="number of images (not with --translate)")
    p.add_argument("-o", "--out", required=True, help="output directory (a file for npz)")
    p.add_argument("--layout", choices=LAYOUTS, default="imagefolder")
    p.add_argument("--seed", type=int, default=0, help="base seed: image i uses seed+i")
    p.add_argument(
        "--labels",
        type=parse_labels,
        default=None,
        help="comma-separated labels used in turn (default: every class in turn, balanced)",
    )
    p.add_argument(
        "--text",
        action="append",
        metavar="CAPTION",
        help="a text-to-image model's caption; repeat for several, used in turn",
    )
    p.add_argument(
        "--truncation",
        type=float,
        metavar="PSI",
        help="truncation psi in [0, 1], as the service's field (default: the model's own)",
    )
    p.add_argument(
        "--url", type=service_url, default="http://127.0.0.1:8000", help="service base URL"
    )
    p.add_argument("--model", default="mnist-cdcgan", help="model name")
    p.add_argument(
        "--local",
        metavar="PATH",
        help="run the ONNX model in-process from a model store, model or version directory",
    )
    p.add_argument("--chunk-size", type=positive_int, default=256, help="images per request")
    p.add_argument(
        "--shard-size", type=positive_int, default=1000, help="images per WebDataset shard"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=5, help="retries per request on 503/errors")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--translate",
        metavar="DIR",
        help="translate this folder's PNG/JPEG files with an image-to-image model into --out",
    )
    p.add_argument("--direction", choices=("A->B", "B->A"), default="A->B", help="with --translate")
    return p


def open_source(args: argparse.Namespace) -> Any:
    """The in-process model (``--local``) or a client of the running service."""
    if args.local:
        from ganclient.local import LocalGenerator

        return LocalGenerator(args.local, args.model, chunk_size=args.chunk_size)
    return GanClient(
        args.url,
        args.model,
        timeout=args.timeout,
        chunk_size=args.chunk_size,
        max_retries=args.retries,
    )


def served_models(url: str, timeout: float) -> list[str]:
    """Names the service at ``url`` serves; empty when it cannot say."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout)
        return [m["name"] for m in response.json()["models"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def explain(exc: Exception, args: argparse.Namespace) -> str:
    """One line saying what went wrong and what to do about it."""
    if isinstance(exc, GanServeError) and isinstance(exc.__cause__, httpx.ConnectError):
        return (
            f"cannot connect to the service at {args.url} ({exc.__cause__}); start it with "
            "`gan-serve` in another terminal, point --url at a running one, or sample "
            "in-process without a server: --local model_store"
        )
    if isinstance(exc, GanServeError) and exc.status_code == 404:
        names = served_models(args.url, args.timeout)
        if names and args.model not in names:
            return f"{exc}; the service at {args.url} serves: {', '.join(names)} (use --model)"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.translate is not None:
        return _translate(args)
    if args.num is None:
        parser.error("the following arguments are required: -n/--num")
    try:
        with open_source(args) as source:
            report = run_sample(
                source,
                args.out,
                args.num,
                layout=args.layout,
                base_seed=args.seed,
                labels=args.labels,
                captions=args.text,
                truncation=args.truncation,
                chunk_size=args.chunk_size,
                shard_size=args.shard_size,
                progress=not args.no_progress,
            )
    except (GanServeError, ValueError, OSError) as exc:
        print(f"gan-sample: error: {explain(exc, args)}", file=sys.stderr)
        return 2
    print(f"{report.out}: wrote {report.written} images, {report.skipped} already there")
    return 0


def _translate(args: argparse.Namespace) -> int:
    from ganclient.translate_folder import translate_folder

    if args.local:
        print(
            "gan-sample: error: --translate needs a running service (no --local)", file=sys.stderr
        )
        return 2
    try:
        with open_source(args) as client:
            written, skipped = translate_folder(
                client, args.translate, args.out, args.direction, args.chunk_size
            )
    except (GanServeError, ValueError, OSError) as exc:
        print(f"gan-sample: error: {explain(exc, args)}", file=sys.stderr)
        return 2
    print(f"{args.out}: wrote {written} translated images, {skipped} already there")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
