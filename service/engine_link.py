"""A front end's side of the engine: the same registry and batcher interfaces as in-process,
so the routes cannot tell where inference runs.

* :class:`EngineLink`: the connection to the engine; reconnects when the engine restarts.
  Requests in flight when it goes away fail with ``BatcherClosed`` (a clean 503), never hang.
* :class:`RemoteBatcher`: ``check_room / enqueue / submit / withdraw / close / idle /
  queued_images`` of :class:`~service.batcher.LatentBatcher`, forwarded to the engine; the
  request's ``finish`` (its encoder) runs here, so encoding spreads over the front ends.
* :class:`RemoteRegistry`: models as the engine serves them; reload and pinning ask the
  engine, whose every swap reaches every front end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batcher import BatcherClosed, DeadlineExceeded, Finish, LatentBatcher, QueueFull
from .ipc import FrameProtocol, ModelInfo
from .manifest import Manifest
from .metrics import ServiceMetrics
from .priority import BasePriorityExecutor
from .registry import LoadedModel, ModelNotFound, ModelRegistry, ReloadRefused
from .settings import Settings, usable_cores

log = logging.getLogger("gan_serve.front_end")

INLINE_FINISH_BYTES = 64 * 1024  # larger results are encoded on a thread, off the event loop
# How long the engine's queue depth, as last reported to this front end, counts for an early
# refusal; after that the front end forwards and lets the engine decide (it always checks).
QUEUE_REPORT_TTL_S = 0.05


@dataclass(eq=False)
class RemoteTicket:
    """What ``enqueue`` returns: ``future`` resolves with the result, as a batcher ticket."""

    rid: int
    n: int
    future: asyncio.Future
    batcher: RemoteBatcher
    finish: Finish | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EngineRuntime:
    """The facts of the engine's onnxruntime session that the listing shows."""

    provider_name: str
    batch_sizes: list[int]


class EngineLink:
    """The connection to the engine at ``path``; ``run()`` keeps it up."""

    def __init__(self, path: str, registry: RemoteRegistry, encode_threads: int) -> None:
        self.path = path
        self.registry = registry
        self.protocol: FrameProtocol | None = None
        self.tickets: dict[int, RemoteTicket] = {}
        self.calls: dict[int, asyncio.Future] = {}
        # The engine's queued images per model and when it said so.
        self.queued: dict[str, tuple[int, float]] = {}
        self.retry_after: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._pool = BasePriorityExecutor(encode_threads, "encode")

    @property
    def up(self) -> bool:
        return self.protocol is not None and not self.protocol.closed

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.up:
            raise BatcherClosed("the inference engine is restarting")
        assert self.protocol is not None
        self.protocol.send(message)

    async def call(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send a reload or pin request and wait for its reply."""
        future = asyncio.get_running_loop().create_future()
        self.calls[message[1]] = future
        try:
            self.send(message)
            return await future
        finally:
            self.calls.pop(message[1], None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            lost = asyncio.Event()
            try:
                _, protocol = await loop.create_unix_connection(
                    lambda lost=lost: FrameProtocol(self.on_message, lost.set), self.path
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.protocol = protocol
            await lost.wait()
            self.protocol = None
            if not self._closing:
                log.warning("engine connection lost; failing %d requests", len(self.tickets))
            self.fail_all("the inference engine restarted; retry")
            self.registry.engine_lost()

    def fail_all(self, reason: str) -> None:
        tickets, self.tickets = self.tickets, {}
        for ticket in tickets.values():
            ticket.batcher.forget(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(BatcherClosed(reason))
        calls, self.calls = self.calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(BatcherClosed(reason))

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            _, rid, images, queued = message
            ticket = self.tickets.pop(rid, None)
            if ticket is None:
                return
            self.queued[ticket.batcher.model] = (queued, time.monotonic())
            ticket.batcher.forget(ticket)
            self._resolve(ticket, images)
        elif kind == "fail":
            _, rid, error, text, retry_after, queued = message
            ticket = self.tickets.pop(rid, None)
            if ticket is None:
                return
            batcher = ticket.batcher
            self.queued[batcher.model] = (queued, time.monotonic())
            batcher.forget(ticket)
            if error == "queue_full":
                self.retry_after[batcher.model] = retry_after
                exc: Exception = QueueFull(queued, batcher.queue_limit, retry_after)
            elif error == "deadline":
                exc = DeadlineExceeded(text)
            elif error == "closed":
                self.registry.unpin(batcher.model, batcher.version, batcher)
                exc = BatcherClosed(text)
            else:
                exc = RuntimeError(text)
            if not ticket.future.done():
                ticket.future.set_exception(exc)
        elif kind == "state":
            self.registry.apply_state(*message[1:])
        elif kind in ("reply", "refused"):
            future = self.calls.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message)

    def _resolve(self, ticket: RemoteTicket, images: np.ndarray) -> None:
        future = ticket.future
        if future.done():
            return
        if ticket.finish is None:
            future.set_result(images)
        elif images.nbytes <= INLINE_FINISH_BYTES:
            try:
                future.set_result(ticket.finish(images))
            except Exception as exc:  # an encoder failure fails its request only
                future.set_exception(exc)
        else:
            encoded = asyncio.get_running_loop().run_in_executor(self._pool, ticket.finish, images)
            encoded.add_done_callback(lambda done: _copy_outcome(done, future))

    def close(self) -> None:
        self._closing = True
        if self.protocol is not None:
            self.protocol.close()
        self._pool.shutdown(wait=False)


def _copy_outcome(source: asyncio.Future, target: asyncio.Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class RemoteBatcher:
    """One model version's batcher, in the engine; the interface of LatentBatcher."""

    def __init__(
        self,
        link: EngineLink,
        model: str,
        version: int,
        queue_limit: int,
        metrics: ServiceMetrics | None,
    ) -> None:
        self.link = link
        self.model = model
        self.version = version
        self.queue_limit = queue_limit
        self.metrics = metrics
        self._pending: set[RemoteTicket] = set()
        self._closing = False

    @property
    def queued_images(self) -> int:
        """The engine's queued images of this model, if it said so recently, else 0."""
        queued, at = self.link.queued.get(self.model, (0, 0.0))
        return queued if time.monotonic() - at < QUEUE_REPORT_TTL_S else 0

    @property
    def idle(self) -> bool:
        return not self._pending

    def start(self) -> None:
        """Nothing to start here: the engine runs the batches."""

    def check_room(self, n: int) -> None:
        """Refuse at once when the engine's queue (as recently reported) has no room; the
        engine checks every request again on arrival."""
        queued = self.queued_images
        if queued + n > self.queue_limit:
            if self.metrics is not None:
                self.metrics.refuse(self.model, "queue_full")
            raise QueueFull(queued, self.queue_limit, self.link.retry_after.get(self.model, 1))

    def enqueue(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        deadline: float | None = None,
        finish: Finish | None = None,
    ) -> RemoteTicket:
        if self._closing or not self.link.up:
            raise BatcherClosed(f"{self.model}: the inference engine is not available")
        n = z.shape[0]
        if labels is not None and labels.shape[:1] != (n,):
            raise ValueError(f"labels must have {n} rows, got shape {labels.shape}")
        self.check_room(n)
        loop = asyncio.get_running_loop()
        ticket = RemoteTicket(self.link.next_id(), n, loop.create_future(), self, finish)
        if n == 0:
            ticket.future.set_result(np.empty((0,), np.uint8))
            return ticket
        self.link.send(("submit", ticket.rid, self.model, self.version, z, labels, deadline))
        self.link.tickets[ticket.rid] = ticket
        self._pending.add(ticket)
        return ticket

    async def submit(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        deadline: float | None = None,
        finish: Finish | None = None,
    ) -> Any:
        ticket = self.enqueue(z, labels, deadline, finish)
        try:
            return await ticket.future
        except asyncio.CancelledError:
            self.withdraw(ticket)
            raise

    def withdraw(self, ticket: RemoteTicket) -> None:
        """The client left: the engine drops its images not yet in a batch."""
        if self.link.tickets.pop(ticket.rid, None) is not None:
            self.forget(ticket)
            if self.link.up:
                self.link.send(("withdraw", ticket.rid))
        ticket.future.cancel()

    def forget(self, ticket: RemoteTicket) -> None:
        self._pending.discard(ticket)

    async def close(self, timeout: float | None = None) -> bool:
        """Stop taking work; True once this front end's requests on it have finished."""
        self._closing = True
        try:
            await asyncio.wait_for(self.wait_idle(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_idle(self) -> None:
        while self._pending:
            await asyncio.sleep(0.01)


class RemoteRegistry(ModelRegistry):
    """The registry of a front end: the engine decides which versions are served (it loads,
    verifies and warms each one first; its every swap reaches every front end). A model then
    runs either in the engine (a :class:`RemoteBatcher`: one batch queue for all front ends,
    as a GPU needs) or, with ``inference`` local (or auto on a CPU), in this front end's own
    batcher and onnxruntime session, with no IPC per request."""

    def __init__(
        self, store: Path, settings: Settings, metrics: ServiceMetrics, engine_path: str
    ) -> None:
        super().__init__(store, settings, metrics)
        self.link = EngineLink(engine_path, self, settings.encode_threads)
        self._link_task: asyncio.Task | None = None
        self._applying: asyncio.Task | None = None

    def session_threads(self) -> int:
        """A front end running its models itself shares the cores with the other front ends,
        which do the same: each session gets its share (threads oversubscribing the cores
        slowed every batch by half on 2 cores), unless ``threads`` says otherwise."""
        if self.settings.threads:
            return self.settings.threads
        return max(1, usable_cores() // self.settings.front_ends())

    def runs_here(self, info: ModelInfo) -> bool:
        mode = self.settings.inference
        return mode == "local" or (mode == "auto" and info.provider == "cpu")

    async def load_all(self) -> None:
        """Connect; return once the engine's first full state is applied here (every model
        loaded and warmed, or the load failed). State messages keep the models in step."""
        self._loop = asyncio.get_running_loop()
        self._link_task = self._loop.create_task(self.link.run())
        while self.state == "loading":
            await asyncio.sleep(0.02)

    def apply_state(self, state: str, errors: dict[str, str], infos: list[ModelInfo]) -> None:
        """Follow the engine's served versions, in the order the engine sent them."""
        previous = self._applying
        self._applying = asyncio.get_running_loop().create_task(
            self._apply(previous, state, errors, infos)
        )

    async def _apply(
        self,
        previous: asyncio.Task | None,
        state: str,
        errors: dict[str, str],
        infos: list[ModelInfo],
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        served = {info.name: info for info in infos}
        for name in list(self.models):
            if name not in served:
                self._retire_here(self.models.pop(name))
        for info in infos:
            current = self.models.get(info.name)
            if current is None or current.version != info.version:
                try:
                    loaded = await self._model(info)
                except ReloadRefused as exc:  # the engine loaded it; this front end cannot
                    log.error("%s v%d not loaded here: %s", info.name, info.version, exc)
                    errors = {**errors, info.name: str(exc)}
                    state = "failed" if state == "ready" else state
                    continue
                self.models[info.name] = loaded
                self.pinned.pop((info.name, info.version), None)
                if current is not None:
                    self._retire_here(current)
            self.metrics.set_model_info(info.name, info.version, info.provider)
        self.load_errors = dict(errors)
        self.state = state

    async def _settled(self) -> None:
        """Wait until every state the engine sent so far is applied here."""
        while self._applying is not None and not self._applying.done():
            await asyncio.gather(self._applying, return_exceptions=True)

    def _retire_here(self, model: LoadedModel) -> None:
        if isinstance(model.batcher, LatentBatcher):
            self._retire(model)

    def engine_lost(self) -> None:
        """Not ready until the restarted engine has loaded and warmed every model again, when
        requests run there; models running here keep serving."""
        if any(not isinstance(m.batcher, LatentBatcher) for m in self.models.values()):
            self.state = "loading"
        self.pinned = type(self.pinned)(
            (k, m) for k, m in self.pinned.items() if isinstance(m.batcher, LatentBatcher)
        )

    def unpin(self, name: str, version: int, batcher: RemoteBatcher) -> None:
        """The engine no longer serves this pinned version; ask again on the next request."""
        pinned = self.pinned.get((name, version))
        if pinned is not None and pinned.batcher is batcher:
            del self.pinned[(name, version)]

    async def _model(self, info: ModelInfo) -> LoadedModel:
        directory = Path(info.directory)
        if self.runs_here(info):
            if info.provider == "cpu" and self.settings.device != "cpu":
                # The engine found no usable CUDA here: skip the probe in every front end.
                self.settings = self.settings.model_copy(update={"device": "cpu"})
            loaded = await asyncio.to_thread(self._load_version, info.name, info.version, directory)
            loaded.batcher.start()
            return loaded
        batcher = RemoteBatcher(
            self.link, info.name, info.version, self.settings.queue_limit, self.metrics
        )
        runtime = EngineRuntime(info.provider, list(info.batch_sizes))
        return LoadedModel(
            info.name, info.version, directory, Manifest.load(directory), runtime, batcher
        )

    async def _ask(self, *request: Any) -> tuple[ModelInfo, Any]:
        kind, name = request[0], request[1]
        try:
            reply = await self.link.call((kind, self.link.next_id(), *request[1:]))
        except BatcherClosed as exc:
            raise ReloadRefused(str(exc), "engine_unavailable", 1) from None
        if reply[0] == "refused":
            _, _, error, code, text, retry_after = reply
            if error == "not_found":
                raise ModelNotFound(name)
            raise ReloadRefused(text, code, retry_after)
        return reply[2], reply[3]

    async def reload(self, name: str, version: int | None = None) -> tuple[LoadedModel, int | None]:
        info, previous = await self._ask("reload", name, version)
        await self._settled()  # the engine's state message came before its reply
        current = self.models.get(name)
        if current is None or current.version != info.version:
            raise ReloadRefused(f"{name} v{info.version} could not be loaded here", "load_failed")
        return current, previous

    async def get_version(self, name: str, version: int, may_load: bool = False) -> LoadedModel:
        current = self.get(name)
        if current.version == version:
            return current
        key = (name, version)
        if key in self.pinned:
            self.pinned.move_to_end(key)
            return self.pinned[key]
        async with self._locks.setdefault(name, asyncio.Lock()):
            if key not in self.pinned:
                info, _ = await self._ask("pin", name, version, may_load)
                self.pinned[key] = await self._model(info)
                while len(self.pinned) > max(1, self.settings.max_pinned_versions):
                    _, evicted = self.pinned.popitem(last=False)
                    self._retire_here(evicted)
        return self.pinned[key]

    def idle(self) -> bool:
        loaded = [*self.models.values(), *self.pinned.values()]
        return not self.link.tickets and all(m.batcher.idle for m in loaded)

    async def close(self, timeout: float = 10.0) -> None:
        loaded = [*self.models.values(), *self.pinned.values()]
        await asyncio.gather(*(m.batcher.close(timeout) for m in loaded), *self._retired)
        self.link.close()
        if self._link_task is not None:
            self._link_task.cancel()
