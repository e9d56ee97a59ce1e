"""Dynamic latent batcher: many requests of n images each -> few large inference batches.

Rules (see docs/SERVICE.md):

* A batch holds at most ``max_batch_size`` images. A request larger than that spans several
  batches; every request gets exactly its own images back, in order.
* No idle tax: when no batch is running, whatever is queued starts at once. While batches are
  running, new requests queue up and the next batch is assembled from them as soon as an
  inference worker frees up, so batches grow with load. With several workers, a free worker
  waits up to ``max_batch_delay`` after the first queued image for a fuller batch (never
  longer), unless a full batch is already queued.
* Inference runs on worker threads, never on the event loop. A request may pass a ``finish``
  function (an encoder): it runs on the same worker thread right after the batch that
  completes the request, so a batch costs one hop between the loop and the worker, not one
  per request.
* A worker that finishes a batch takes the next one itself when it may start at once (the
  same rule the loop applies), so a loop busy with other work (a flood of refused requests,
  thousands of connections) delays answers but never leaves the model idle.
* Bounded: a request that would push the queued images past ``queue_limit`` is refused at once
  (:class:`QueueFull`). A request whose deadline passes before any of its images started is
  failed with :class:`DeadlineExceeded` and never computed. A cancelled request (client gone)
  has its queued images dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import ServiceMetrics
from .priority import BasePriorityExecutor

log = logging.getLogger("gan_serve.batcher")

RunBatch = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
Finish = Callable[[np.ndarray], Any]  # uint8 [n, S, S, C] -> the request's result (e.g. bytes)


class QueueFull(Exception):
    """Too many images queued; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, queued: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{queued} images queued, limit {limit}")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed while it was still queued; nothing was computed."""


class BatcherClosed(Exception):
    """The batcher stopped taking work (a newer model version replaced it, or shutdown)."""


@dataclass(eq=False)
class _Job:
    z: np.ndarray  # float32 [n, nz]
    labels: np.ndarray | None  # int64 [n]
    future: asyncio.Future
    enqueued_at: float
    out: np.ndarray | None = None  # uint8 [n, S, S, C], filled batch by batch
    dispatched: int = 0  # images handed to a batch so far
    completed: int = 0  # images written to out so far
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)
    finish: Finish | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.z.shape[0]


Ticket = _Job  # what enqueue returns: ``ticket.future`` resolves with the result
_Piece = tuple[_Job, int, int]  # job, start, stop: job.z[start:stop] is in the batch


class LatentBatcher:
    """Batches ``submit`` calls for one model version; see the module docstring for the rules."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        model: str,
        max_batch_size: int = 64,
        max_batch_delay_s: float = 0.005,
        queue_limit: int = 4096,
        workers: int = 1,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.queue_limit = queue_limit
        self.workers = workers
        self.metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued = 0  # images not yet handed to a batch
        self._running = 0  # batches in flight
        # The loop adds to and drops from the queue; a worker may take the next batch off it.
        self._lock = threading.Lock()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch_soon = False
        self._executor = BasePriorityExecutor(workers, f"infer-{model}")
        self._batch_seconds = 0.01  # moving estimate, for Retry-After
        self._depth = metrics.queue_depth.labels(model=model) if metrics is not None else None
        self.batches_run = 0

    # --- public ---------------------------------------------------------------------------

    @property
    def queued_images(self) -> int:
        return self._queued

    @property
    def idle(self) -> bool:
        return not self._queue and self._running == 0

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def submit(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        deadline: float | None = None,
        finish: Finish | None = None,
    ) -> Any:
        """Queue n latents (+ labels) and wait for their images, uint8 [n, S, S, C].

        With ``finish``, the result is ``finish(images)``, computed on the inference worker.
        ``deadline`` is a ``time.monotonic()`` instant; raises QueueFull, DeadlineExceeded,
        BatcherClosed, or the inference (or finish) error. Cancelling the caller drops its
        queued images.
        """
        ticket = self.enqueue(z, labels, deadline, finish)
        try:
            return await ticket.future
        except asyncio.CancelledError:
            self.withdraw(ticket)
            raise

    def enqueue(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        deadline: float | None = None,
        finish: Finish | None = None,
    ) -> Ticket:
        """:meth:`submit` without the wait (no task per request): the ticket's ``future``
        resolves as ``submit`` returns or raises; a caller that stops waiting calls
        :meth:`withdraw`. Raises QueueFull or BatcherClosed at once."""
        if self._closing:
            raise BatcherClosed(f"{self.model}: batcher is closed")
        n = z.shape[0]
        if labels is not None and labels.shape[:1] != (n,):
            raise ValueError(f"labels must have {n} rows, got shape {labels.shape}")
        self.check_room(n)
        self.start()
        loop = asyncio.get_running_loop()
        job = _Job(
            z=z, labels=labels, future=loop.create_future(), enqueued_at=loop.time(), finish=finish
        )
        if n == 0:
            job.future.set_result(np.empty((0,), np.uint8))
            return job
        if deadline is not None:
            delay = deadline - time.monotonic()
            expiry = job.expiry = loop.call_later(max(delay, 0.0), self._expire, job)
            job.future.add_done_callback(lambda _: expiry.cancel())
        with self._lock:
            self._queue.append(job)
            self._add_queued(n)
        self._idle.clear()
        if not self._dispatch_soon:  # once per loop iteration: requests arriving together
            self._dispatch_soon = True  # share a batch
            loop.call_soon(self._dispatch)
        return job

    def check_room(self, n: int) -> None:
        """Raise QueueFull (and count the refusal) if n more images would exceed the limit;
        callers check before preparing latents, so a refusal under a flood costs little."""
        if self._queued + n > self.queue_limit:
            self._refuse("queue_full")
            raise QueueFull(self._queued, self.queue_limit, self._retry_after())

    def withdraw(self, ticket: Ticket) -> None:
        """The caller stopped waiting (client gone): drop its images not yet in a batch."""
        if self._drop(ticket):
            self._refuse("client_gone")

    async def close(self, timeout: float | None = None) -> bool:
        """Stop taking work, let queued and running batches finish; True if all finished."""
        self._closing = True
        if self.idle:
            self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            finished = True
        except asyncio.TimeoutError:
            finished = False
            with self._lock:
                left = list(self._queue)
                self._queue.clear()
                self._add_queued(-self._queued)
            for job in left:  # never leave a caller waiting on a stopped batcher
                if not job.future.done():
                    job.future.set_exception(BatcherClosed(f"{self.model}: closed while queued"))
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False)
        return finished

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --- scheduling -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start whatever batches may start now. Runs on the event loop: once per loop iteration
        in which requests arrived (so they share a batch), directly when a batch ends, and when
        a batch-delay timer fires. No scheduler task: a finished batch is followed by the next
        one within one loop iteration, however busy the loop is with other work (a flood of
        refused requests, for one)."""
        loop = self._loop
        assert loop is not None, "start() first"
        self._dispatch_soon = False
        while self._running < self.workers:
            with self._lock:
                due = self._due(self._running)
                if due is None:
                    break
                now = loop.time()
                if now < due:
                    self._arm_timer(due)
                    break
                pieces = self._take_batch(now)
                if pieces:
                    self._running += 1
            if pieces:
                self._start_batch(loop, pieces)
        if self.idle:
            self._idle.set()

    def _due(self, others_running: int) -> float | None:
        """When the head of the queue may start (under the lock): None with nothing queued; at
        once with a full batch queued or no other batch running; else max_batch_delay after
        the first queued image, to let a fuller batch gather."""
        if not self._queue:
            return None
        if others_running == 0 or self._queued >= self.max_batch_size:
            return 0.0
        return self._queue[0].enqueued_at + self.max_batch_delay_s

    def _take_next(self, loop: asyncio.AbstractEventLoop) -> list[_Piece]:
        """On a worker that just finished a batch: the next batch if it may start now (this
        worker's batch no longer counts as running), else nothing and the loop decides."""
        with self._lock:
            if self._closing and not self._queue:
                return []
            due = self._due(self._running - 1)
            now = loop.time()
            if due is None or now < due:
                return []
            return self._take_batch(now)

    def _arm_timer(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._dispatch)

    def _take_batch(self, now: float) -> list[_Piece]:
        """Cut up to max_batch_size images off the head of the queue (under the lock)."""
        pieces: list[_Piece] = []
        room = self.max_batch_size
        while self._queue and room:
            job = self._queue[0]
            if job.future.done():  # cancelled or expired in the meantime
                self._queue.popleft()
                continue
            if job.dispatched == 0:
                if self.metrics is not None:
                    self.metrics.queue_wait.labels(model=self.model).observe(now - job.enqueued_at)
            take = min(room, job.n - job.dispatched)
            pieces.append((job, job.dispatched, job.dispatched + take))
            job.dispatched += take
            room -= take
            self._add_queued(-take)
            if job.dispatched == job.n:
                self._queue.popleft()
        return pieces

    def _start_batch(self, loop: asyncio.AbstractEventLoop, pieces: list[_Piece]) -> None:
        """Hand a batch to a worker, which goes on with the next batches while they may start
        at once; each batch's end comes back to the loop as one callback."""

        def work() -> None:
            import os as _os

            if _os.environ.get("EXPNICE"):
                _os.setpriority(_os.PRIO_PROCESS, threading.get_native_id(), 0)
            batch = pieces
            while batch:
                try:
                    done: Any = self._work(batch)
                    failed: Exception | None = None
                except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
                    done, failed = None, exc
                following = self._take_next(loop)
                try:
                    loop.call_soon_threadsafe(
                        self._batch_done, batch, done, failed, bool(following)
                    )
                except RuntimeError:  # the loop has closed (shutdown): nobody is waiting
                    return
                batch = following

        try:
            self._executor.submit(work)
        except RuntimeError as exc:  # executor shut down
            self._batch_done(pieces, None, exc, False)

    def _batch_done(
        self,
        pieces: list[_Piece],
        done: list[tuple[_Job, Any, bool]] | None,
        failed: Exception | None,
        worker_goes_on: bool,
    ) -> None:
        """On the loop: deliver a batch's results; unless its worker went on with the next
        batch, that worker is free and whatever may start now starts."""
        try:
            if failed is not None:
                log.error("%s: inference failed for a batch: %r", self.model, failed)
                for job, _, _ in pieces:
                    if not job.future.done():
                        job.future.set_exception(failed)
                    self._drop(job)
            else:
                for job, result, job_failed in done or ():
                    if job.future.done():
                        continue
                    if job_failed:
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
        finally:
            if not worker_goes_on:
                self._running -= 1
                self._dispatch()

    def _work(self, pieces: list[_Piece]) -> list[tuple[_Job, Any, bool]]:
        """On the worker: run the batch, scatter images to their jobs, finish completed jobs.

        Returns (job, result or exception, failed) for each job this batch completed.
        """
        z = np.concatenate([job.z[a:b] for job, a, b in pieces])
        labels = None
        if pieces[0][0].labels is not None:
            labels = np.concatenate([job.labels[a:b] for job, a, b in pieces])
        started = time.perf_counter()
        images = self.run_batch(z, labels)
        elapsed = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self.batches_run += 1
        if self.metrics is not None:
            self.metrics.inference_duration.labels(model=self.model).observe(elapsed)
            self.metrics.batch_size.labels(model=self.model).observe(len(z))
            self.metrics.images_generated.labels(model=self.model).inc(len(z))
        done: list[tuple[_Job, Any, bool]] = []
        offset = 0
        for job, a, b in pieces:
            chunk = images[offset : offset + (b - a)]
            offset += b - a
            if job.future.done():  # cancelled or expired meanwhile; read-only peek
                continue
            if a == 0 and b == job.n:
                job.out = chunk  # the whole request in this batch: no copy
            else:
                if job.out is None:
                    job.out = np.empty((job.n, *images.shape[1:]), images.dtype)
                job.out[a:b] = chunk
            job.completed += b - a
            if job.completed < job.n:
                continue
            if job.finish is None:
                done.append((job, job.out, False))
                continue
            try:
                done.append((job, job.finish(job.out), False))
            except Exception as exc:  # an encoder failure fails its request only
                log.exception("%s: finishing a request failed", self.model)
                done.append((job, exc, True))
        return done

    # --- bookkeeping ----------------------------------------------------------------------

    def _expire(self, job: _Job) -> None:
        """Deadline passed: fail the job only if none of its images has started, and could not
        start now either (a dispatch already due goes first: a lone request with a tight
        deadline on an idle batcher is computed, not refused)."""
        if self._dispatch_soon:
            self._dispatch()
        with self._lock:
            expired = job.dispatched == 0 and not job.future.done() and job in self._queue
            if expired:
                self._remove(job)
        if expired:
            if self.idle:
                self._idle.set()
            job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            self._refuse("deadline")

    def _drop(self, job: _Job) -> bool:
        """On the loop: remove a job's undispatched images from the queue; True if any were
        dropped."""
        with self._lock:
            # Membership first (identity: eq=False): deque.remove's ValueError would format
            # the job's repr, arrays included, for every request already dispatched.
            remaining = self._remove(job) if job in self._queue else 0
        if self.idle:
            self._idle.set()
        return remaining > 0

    def _remove(self, job: _Job) -> int:
        """Under the lock: take a queued job out; returns its undispatched image count."""
        remaining = job.n - job.dispatched
        self._queue.remove(job)
        job.dispatched = job.n
        self._add_queued(-remaining)
        return remaining

    def _add_queued(self, delta: int) -> None:
        self._queued += delta
        if self._depth is not None:  # inc, not set: several batchers may serve one model
            self._depth.inc(delta)

    def _refuse(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refuse(self.model, reason)

    def _retry_after(self) -> int:
        batches = self._queued / self.max_batch_size / self.workers
        return max(1, math.ceil(batches * self._batch_seconds))
