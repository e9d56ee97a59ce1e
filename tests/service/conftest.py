"""Fixtures for the serving-core tests: tiny model stores, an in-process app, metric reading."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.support.tiny_model import write_tiny_model


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A model store holding ``tiny`` v1 (conditional, 10 classes, nz=8, 8x8x1)."""
    write_tiny_model(tmp_path, "tiny", 1)
    return tmp_path


async def wait_ready(client: httpx.AsyncClient, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("app never became ready")


@asynccontextmanager
async def running_app(store: Path, **overrides) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, an httpx client on it, models loaded."""
    settings = Settings(model_store=store, **overrides)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            await wait_ready(client)
            yield app, client


def run(coro):
    return asyncio.run(coro)


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        v
        for n, lab, v in metric_samples(text)
        if n == name and all(lab.get(k) == val for k, val in labels.items())
    )


class Gate:
    """Holds every inference until ``open()``: makes queueing and batching deterministic."""

    def __init__(self, app: FastAPI, name: str = "tiny") -> None:
        self.batcher = app.state.registry.get(name).batcher
        self.inner: Callable = self.batcher.run_batch
        self.event = threading.Event()
        self.started = threading.Event()
        self.batch_sizes: list[int] = []
        self.batcher.run_batch = self._run

    def _run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        self.batch_sizes.append(len(z))
        self.started.set()
        self.event.wait(30)
        return self.inner(z, labels)

    def open(self) -> None:
        self.event.set()

    async def wait_started(self) -> None:
        for _ in range(1000):
            if self.started.is_set():
                return
            await asyncio.sleep(0.005)
        raise TimeoutError("no batch started")


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)
