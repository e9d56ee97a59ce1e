"""Admitted work first: the event loop's thread runs at a lower CPU priority than the threads
that run batches and encode answers.

Under a flood of requests (a retry storm of clients refused with 503) the event loop would
otherwise take as much CPU as the batches do, parsing and refusing, and the requests already
admitted would finish late: goodput falls as the flood grows. With the loop's thread lowered
(``Settings.loop_nice``), the CPU goes first to finishing admitted work, and accepting or
refusing new requests takes what is left. Without a flood both get all they ask for.

Linux threads inherit the priority of the thread that starts them, and an unprivileged thread
may lower its priority but never raise it back. So worker threads are started by one launcher
thread that keeps the process's base priority (:class:`BasePriorityExecutor`), whichever thread
submits the work. Elsewhere (no per-thread priority) lowering is skipped.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("gan_serve.priority")

_launch_requests: queue.SimpleQueue | None = None
_launcher_lock = threading.Lock()


def _launcher(requests: queue.SimpleQueue) -> None:
    while True:
        action, done = requests.get()
        try:
            action()
        finally:
            done.set()


def _ensure_launcher() -> queue.SimpleQueue:
    global _launch_requests
    with _launcher_lock:
        if _launch_requests is None:
            requests: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(
                target=_launcher, args=(requests,), name="launcher", daemon=True
            ).start()
            _launch_requests = requests
        return _launch_requests


def on_launcher(action: Callable[[], None]) -> None:
    """Run ``action`` (which starts threads) on the launcher thread and wait for it, so the
    threads it starts get the process's base priority, not the caller's."""
    done = threading.Event()
    _ensure_launcher().put((action, done))
    done.wait()


def lower_this_thread(nice: int) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` steps (the launcher starts first, so
    threads started later through it keep the base priority); False where not supported."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    _ensure_launcher()
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # a sandbox without setpriority: serve anyway
        log.warning("could not lower the event loop's priority: %s", exc)
        return False
    return True


def thread_nice() -> int:
    """The calling thread's nice value (Linux), for tests and logs."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class BasePriorityExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose threads are started on the launcher: at the base priority,
    whichever thread submits (usable as the loop's default executor, for asyncio.to_thread)."""

    def __init__(self, workers: int, name: str) -> None:
        super().__init__(workers, thread_name_prefix=name)

    def _adjust_thread_count(self) -> None:  # called by submit(), under its lock
        if self._idle_semaphore.acquire(timeout=0):
            return  # an idle thread takes the job: no hop to the launcher per submit
        on_launcher(super()._adjust_thread_count)
