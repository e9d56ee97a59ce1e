"""``python -m service`` / ``gan-serve``: run the service under uvicorn with a graceful drain.

On SIGTERM (or Ctrl-C) the service stops being ready, refuses new requests with 503, lets
queued and in-flight work finish (at most ``--drain-timeout-s``), then exits 0. A second
signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import FrameType

import uvicorn

from .app import create_app
from .server_limits import uvicorn_limits
from .settings import Settings

FLAGS: list[tuple[str, type, str]] = [
    ("host", str, "interface to bind"),
    ("port", int, "port to bind"),
    ("model-store", str, "model_store directory"),
    ("device", str, "auto | cuda | cpu"),
    ("threads", int, "onnxruntime intra-op threads (0 = all cores)"),
    ("max-batch-size", int, "images per inference batch"),
    ("max-batch-delay-ms", float, "longest wait for a fuller batch while another runs"),
    ("inference-workers", int, "batches run at once"),
    ("queue-limit", int, "queued images before requests get 503"),
    ("batch-buckets", str, "auto | exact | pow2"),
    ("max-images-per-request", int, "largest n"),
    ("max-body-bytes", int, "request body limit"),
    ("request-timeout-s", float, "default queue deadline"),
    ("png-compress-level", int, "zlib level for PNG (0-9)"),
    ("watch-interval-s", float, "poll the store for new versions (0 = off)"),
    ("drain-timeout-s", float, "longest SIGTERM drain"),
    ("drain-grace-s", float, "keep /readyz at 503 at least this long on SIGTERM"),
    ("log-level", str, "debug | info | warning | error"),
]


def parse_settings(argv: list[str] | None = None) -> Settings:
    """CLI flags override GAN_SERVE_* environment variables, which override defaults."""
    parser = argparse.ArgumentParser(prog="gan-serve", description=__doc__.splitlines()[0])
    for flag, kind, help_text in FLAGS:
        parser.add_argument(f"--{flag}", type=kind, default=None, help=help_text)
    parser.add_argument("--cuda-graphs", action="store_true", default=None, help="CUDA graphs")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain step before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: after a drain the process exits 0 instead of
        # re-raising the signal.
        if self._draining or not self.started or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self._drain()
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    ctx = app.state.context

    async def drain() -> None:
        logging.getLogger("gan_serve").info("draining (timeout %.1fs)", settings.drain_timeout_s)
        ctx.lifecycle.begin_drain()
        finished = await ctx.lifecycle.wait_drained(
            ctx.registry.idle, settings.drain_timeout_s, settings.drain_grace_s
        )
        if not finished:
            logging.getLogger("gan_serve").warning("drain timed out; exiting anyway")

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        lifespan="on",
        **uvicorn_limits(settings, app),
    )
    server = DrainingServer(config, drain)
    server.run()
    return 0 if not server.force_exit else 1


if __name__ == "__main__":
    sys.exit(main())
