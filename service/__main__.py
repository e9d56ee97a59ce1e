"""``python -m service`` / ``gan-serve``: run the service under uvicorn with a graceful drain.

On SIGTERM (or Ctrl-C) the service stops being ready, refuses new requests with 503, lets
queued and in-flight work finish (at most ``--drain-timeout-s``), then exits 0. A second
signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError

from .settings import Settings


def _flag_type(annotation: Any) -> tuple[Callable[[str], Any] | None, list[str] | None]:
    """argparse ``type`` and ``choices`` for a Settings field (pydantic validates the value)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, [str(a) for a in args]
    if args and get_origin(annotation) is not None:  # Optional[X] / X | None
        return _flag_type(args[0])
    if annotation in (int, float):
        return annotation, None
    return str, None


# Settings read from the environment only: a flag's value is visible to every local user in
# the process list.
ENV_ONLY = frozenset({"admin_token"})


def settings_parser() -> argparse.ArgumentParser:
    """One flag per ``Settings`` field (but ENV_ONLY), generated, so no setting can lack it."""
    parser = argparse.ArgumentParser(
        prog="gan-serve",
        description=__doc__.splitlines()[0],
        allow_abbrev=False,  # else --admin-token would pass as --admin-token-file's prefix
        epilog="Every flag can also be set as GAN_SERVE_<NAME> in the environment; "
        "a flag wins over the environment.",
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or name.replace('_', ' ')} (default: {_shown(field)})"
        if get_origin(field.annotation) is list:
            parser.add_argument(flag, action="append", default=None, help=help_text + "; repeat")
            continue
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        kind, choices = _flag_type(field.annotation)
        parser.add_argument(flag, type=kind, choices=choices, default=None, help=help_text)
    return parser


def _shown(field: Any) -> str:
    default = field.get_default(call_default_factory=True)
    return "(none)" if default is None else str(default)


def parse_settings(argv: list[str] | None = None) -> Settings:
    """CLI flags override GAN_SERVE_* environment variables, which override defaults."""
    parser = settings_parser()
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        parser.error(problems)
        raise  # parser.error exits


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every front end shares; raises PortBusy when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortBusy(
            f"gan-serve: cannot listen on {host}:{port} ({exc.strerror}); "
            f"is another server running? choose another port with --port"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class PortBusy(OSError):
    """The port is taken (or not ours to bind); the message names ``--port``."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain step before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, drain, ignore_sigint: bool = False) -> None:
        super().__init__(config)
        self._drain = drain
        self._ignore_sigint = ignore_sigint
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: after a drain the process exits 0 instead of
        # re-raising the signal.
        if sig == signal.SIGINT and self._ignore_sigint:
            return
        if self._draining or not self.started or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self._drain()
        self.should_exit = True


def serve_front_end(
    settings: Settings,
    sock: socket.socket,
    engine_path: str | None = None,
    metrics_dir: str | None = None,
    supervised: bool = False,
) -> int:
    """Serve HTTP on ``sock`` until SIGTERM, then drain; with ``engine_path``, as one front end
    of several (the parent owns Ctrl-C and tells each front end to drain)."""
    from .app import create_app
    from .priority import lower_this_thread
    from .server_limits import uvicorn_limits

    app = create_app(settings, engine_path, metrics_dir)
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
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        lifespan="on",
        **uvicorn_limits(settings, app),
    )
    server = DrainingServer(config, drain, ignore_sigint=supervised)
    lower_this_thread(settings.loop_nice)  # uvicorn's loop runs on this thread
    server.run(sockets=[sock])
    return 0 if not server.force_exit else 1


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        sock = bind_socket(settings.host, settings.port)
    except PortBusy as exc:
        print(exc, file=sys.stderr)
        return 2
    front_ends = settings.front_ends()
    if front_ends == 1:
        return serve_front_end(settings, sock)
    from .supervisor import Supervisor

    return Supervisor(settings, sock, front_ends).run()


if __name__ == "__main__":
    sys.exit(main())
