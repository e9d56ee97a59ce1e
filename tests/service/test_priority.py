"""Admitted work first: worker threads keep the base priority below a lowered event loop; and
the loop is not paused by collections of start-up objects."""

from __future__ import annotations

import gc
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from service.lifecycle import YOUNG_COLLECTION_THRESHOLD
from service.priority import BasePriorityExecutor, lower_this_thread, thread_nice
from tests.service.conftest import run, running_app
from tests.support.server import REPO_ROOT, ServiceProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux priorities")


def test_executor_threads_keep_the_base_priority_when_a_lowered_thread_starts_them() -> None:
    seen: dict[str, int] = {}

    def lowered_caller() -> None:
        base = thread_nice()
        assert lower_this_thread(3)
        seen["caller"] = thread_nice() - base
        pool = BasePriorityExecutor(2, "test")
        seen["worker"] = pool.submit(thread_nice).result(timeout=10) - base
        child = threading.Thread(target=lambda: seen.setdefault("plain", thread_nice() - base))
        child.start()
        child.join()
        pool.shutdown()

    caller = threading.Thread(target=lowered_caller)
    caller.start()
    caller.join()
    assert seen == {"caller": 3, "worker": 0, "plain": 3}


def _nices(pid: int) -> dict[int, int]:
    """tid -> nice for every thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    nices = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        nices[int(task.name)] = int(fields[16])
    return nices


def test_service_lowers_its_event_loop_and_not_its_inference() -> None:
    with ServiceProcess(REPO_ROOT / "model_store", "--loop-nice", "7") as service:
        url = f"{service.url}/v1/models/mnist-cdcgan/generate?seed=1"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200
        nices = _nices(service.pid)
    base = min(nices.values())
    assert nices[service.pid] == base + 7  # the main thread runs uvicorn's loop
    assert sum(1 for n in nices.values() if n == base) >= 2  # launcher + inference worker


def test_app_freezes_its_start_up_objects_once_models_are_loaded(store) -> None:
    """Full collections then skip modules, routes and sessions: no loop pause per collection."""

    async def scenario() -> int:
        gc.unfreeze()
        async with running_app(store) as (app, _client):
            await app.state.loading
            return gc.get_freeze_count(), gc.get_threshold()[0]

    before = gc.get_threshold()
    try:
        frozen, young_threshold = run(scenario())
        assert frozen > 10_000 and young_threshold == YOUNG_COLLECTION_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
