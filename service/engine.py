"""The inference engine process: every model loaded once, one batch queue per model version fed
by every front end.

It runs the in-process :class:`~service.registry.ModelRegistry` (manifest and sha256 checks,
warm-up, hot swap, pinned versions, store watch) with its :class:`~service.batcher.LatentBatcher`
and answers front ends over :mod:`service.ipc`. Images go back raw; front ends encode them.
A front end that disconnects (it exited or crashed) has its queued images dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from functools import partial
from typing import Any

from .batcher import BatcherClosed, DeadlineExceeded, QueueFull, Ticket
from .ipc import FrameProtocol, ModelInfo
from .lifecycle import freeze_startup_objects
from .metrics import ServiceMetrics
from .registry import LoadedModel, ModelNotFound, ModelRegistry, ReloadRefused
from .settings import Settings

log = logging.getLogger("gan_serve.engine")


def model_info(model: LoadedModel) -> ModelInfo:
    return ModelInfo(
        model.name,
        model.version,
        str(model.directory),
        model.provider,
        tuple(model.runtime.batch_sizes),
    )


class Engine:
    """Listens on a Unix socket; each connection is one front end."""

    def __init__(self, settings: Settings, socket_path: str, metrics_dir: str | None) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.metrics = ServiceMetrics(metrics_dir)
        self.registry = ModelRegistry(settings.resolved_model_store(), settings, self.metrics)
        self.registry.on_swap = self.broadcast_state
        self.front_ends: set[FrontEndConnection] = set()

    def state_message(self) -> tuple[Any, ...]:
        models = [model_info(m) for m in self.registry.models.values()]
        return ("state", self.registry.state, dict(self.registry.load_errors), models)

    def broadcast_state(self) -> None:
        message = self.state_message()
        for front_end in self.front_ends:
            front_end.protocol.send(message)

    def lookup(self, name: str, version: int) -> LoadedModel | None:
        serving = self.registry.models.get(name)
        if serving is not None and serving.version == version:
            return serving
        return self.registry.pinned.get((name, version))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if os.path.exists(self.socket_path):  # left by an engine that crashed
            os.unlink(self.socket_path)
        server = await loop.create_unix_server(
            lambda: FrontEndConnection(self).protocol, self.socket_path
        )
        loading = loop.create_task(self.registry.load_all())
        loading.add_done_callback(lambda _: self.broadcast_state())
        loading.add_done_callback(lambda _: freeze_startup_objects())
        await stop.wait()
        log.info("engine stopping")
        server.close()
        loading.cancel()
        await self.registry.close(self.settings.drain_timeout_s)


class FrontEndConnection:
    """One front end's requests: submit, withdraw, reload, pin."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.protocol = FrameProtocol(self.on_message, self.on_lost, self.on_made)
        self.tickets: dict[int, tuple[LoadedModel, Ticket]] = {}
        engine.front_ends.add(self)

    def on_made(self) -> None:
        self.protocol.send(self.engine.state_message())

    def on_lost(self) -> None:
        self.engine.front_ends.discard(self)
        for model, ticket in self.tickets.values():
            model.batcher.withdraw(ticket)
            ticket.future.cancel()
        self.tickets.clear()

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "submit":
            self.submit(*message[1:])
        elif kind == "withdraw":
            entry = self.tickets.pop(message[1], None)
            if entry is not None:
                model, ticket = entry
                model.batcher.withdraw(ticket)
                ticket.future.cancel()
        elif kind in ("reload", "pin"):
            asyncio.get_running_loop().create_task(self.change(*message))
        else:
            log.error("unknown message %r from a front end", kind)

    def submit(self, rid: int, name: str, version: int, z, labels, deadline) -> None:
        model = self.engine.lookup(name, version)
        if model is None:
            self.protocol.send(("fail", rid, "closed", f"{name} v{version} is not served", 0, 0))
            return
        batcher = model.batcher
        try:
            ticket = batcher.enqueue(z, labels, deadline)
        except QueueFull as exc:
            failure = ("fail", rid, "queue_full", str(exc), exc.retry_after, batcher.queued_images)
            self.protocol.send(failure)
            return
        except (BatcherClosed, ValueError) as exc:
            kind = "closed" if isinstance(exc, BatcherClosed) else "error"
            self.protocol.send(("fail", rid, kind, str(exc), 0, batcher.queued_images))
            return
        self.tickets[rid] = (model, ticket)
        ticket.future.add_done_callback(partial(self._answer, rid, model))

    def _answer(self, rid: int, model: LoadedModel, future: asyncio.Future) -> None:
        if self.tickets.pop(rid, None) is None or future.cancelled():
            return  # withdrawn
        queued = model.batcher.queued_images
        exc = future.exception()
        if exc is None:
            self.protocol.send(("done", rid, future.result(), queued))
            return
        kind = {DeadlineExceeded: "deadline", BatcherClosed: "closed", QueueFull: "queue_full"}
        error = kind.get(type(exc), "error")
        message = str(exc) if error != "error" else f"{type(exc).__name__}: {exc}"
        self.protocol.send(("fail", rid, error, message, 0, queued))

    async def change(
        self, kind: str, rid: int, name: str, version: int | None, may_load: bool = False
    ) -> None:
        """Reload (swap the serving version) or pin (a version beside it, loaded on first use
        when the front end allows it)."""
        registry = self.engine.registry
        try:
            if kind == "reload":
                loaded, previous = await registry.reload(name, version)
            else:
                assert version is not None
                loaded, previous = await registry.get_version(name, version, may_load), None
        except ModelNotFound:
            self.protocol.send(("refused", rid, "not_found", "model_not_found", name, None))
        except ReloadRefused as exc:
            failure = ("refused", rid, "refused", exc.code, str(exc), exc.retry_after)
            self.protocol.send(failure)
        except Exception as exc:  # a reply must always come back
            log.exception("%s %s v%s failed", kind, name, version)
            self.protocol.send(("refused", rid, "refused", "load_failed", str(exc), None))
        else:
            self.protocol.send(("reply", rid, model_info(loaded), previous))


def run_engine(settings: Settings, socket_path: str, metrics_dir: str | None) -> None:
    """Process entry point: Ctrl-C is the parent's to handle; SIGTERM stops the engine."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asyncio.run(Engine(settings, socket_path, metrics_dir).run())
