"""Drain state shared by the app, its middleware and the server's SIGTERM handling, and the
end of start-up."""

from __future__ import annotations

import asyncio
import gc
import time


class Lifecycle:
    """Counts requests in flight and knows whether the service is draining."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.drain_started: float | None = None

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()

    async def wait_drained(self, is_idle, timeout: float, grace: float = 0.0) -> bool:
        """Wait until no request is in flight and ``is_idle()``, and ``grace`` has passed.

        Returns False if ``timeout`` ran out first.
        """
        started = self.drain_started or time.monotonic()
        while True:
            now = time.monotonic()
            if self.in_flight == 0 and is_idle() and now - started >= grace:
                return True
            if now - started >= timeout:
                return False
            await asyncio.sleep(0.02)


# Requests free almost everything they allocate by reference counting; a young-generation
# collection every 700 allocations (Python's default) mostly finds nothing, and cost the
# single-image path about a sixth of its throughput (docs/SERVICE.md).
YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_startup_objects() -> None:
    """Once the models are loaded: move every object alive now (modules, routes, sessions) out
    of the garbage collector's reach, and collect the young generation less often. A full
    collection then scans only what requests made since, instead of pausing the event loop
    for tens of milliseconds (a p99 spike for every request in flight) each time it runs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 20, 10)
