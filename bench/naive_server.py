"""The naive baseline: the FastAPI app a user would write by hand around onnxruntime.

One ``session.run`` per request, no batcher, no queue limit, encoding inline. It speaks the same
seeds and labels as the service (``service.manifest.latents_from_seeds``) so both compute the same
images. Run: ``python -m bench.naive_server MODEL_DIR --port 8001``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Query, Response
from pydantic import BaseModel, Field

from bench.ceiling import make_session
from bench.encoders import encode_npy, encode_png
from service.manifest import LABEL_INPUT, LATENT_INPUT, Manifest, latents_from_seeds

MODEL_DIR_ENV = "BENCH_NAIVE_MODEL_DIR"
THREADS_ENV = "BENCH_NAIVE_THREADS"


class GenerateBody(BaseModel):
    """POST body: ``n`` images from consecutive seeds, as PNG (n=1) or npy."""

    n: int = Field(default=1, ge=1, le=256)
    seed: int = Field(default=0, ge=0)
    label: int | None = Field(default=None, ge=0)
    format: str = Field(default="png", pattern="^(png|npy)$")


def create_naive_app(model_dir: Path, threads: int = 1) -> FastAPI:
    """The whole server: load once, then generate and encode inside each request."""
    manifest = Manifest.load(model_dir)
    session = make_session(manifest.onnx_path(model_dir), threads)
    app = FastAPI(title="naive onnxruntime server")

    def run(n: int, seed: int, label: int | None, fmt: str) -> Response:
        seeds = list(range(seed, seed + n))
        feeds = {LATENT_INPUT: latents_from_seeds(seeds, manifest.nz)}
        if manifest.conditional:
            labels = [label] * n if label is not None else [s % manifest.num_classes for s in seeds]
            feeds[LABEL_INPUT] = np.asarray(labels, dtype=np.int64)  # [n]
        images = session.run(None, feeds)[0]  # [n, H, W, C] uint8
        if fmt == "npy":
            return Response(encode_npy(images), media_type="application/x-npy")
        return Response(encode_png(images[0]), media_type="image/png")

    @app.get("/generate")
    def generate_get(seed: int = Query(0, ge=0), label: int | None = Query(None, ge=0)) -> Response:
        return run(1, seed, label, "png")

    @app.post("/generate")
    def generate_post(body: GenerateBody) -> Response:
        return run(body.n, body.seed, body.label, body.format)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory bench.naive_server:app_from_env``."""
    return create_naive_app(Path(os.environ[MODEL_DIR_ENV]), int(os.environ.get(THREADS_ENV, "1")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    app = create_naive_app(args.model_dir, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
