"""Fixtures for the interoperability tests: a tiny model store and, lazily, a service."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_model import write_tiny_model

NZ = 8
SIZE = 8
CLASSES = 10


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a conditional model ``tiny`` (nz=8, 8x8x1, 10 classes) and an
    unconditional ``plain``."""
    store = tmp_path_factory.mktemp("store")
    write_tiny_model(store, "tiny", 1, nz=NZ, image_size=SIZE, num_classes=CLASSES)
    write_tiny_model(store, "plain", 1, nz=NZ, image_size=SIZE, num_classes=0)
    return store


@pytest.fixture(scope="session")
def service(tiny_store: Path):
    """One service for the module's read-only tests: tiny models, small request limit."""
    from tests.support.server import ServiceProcess

    with ServiceProcess(
        tiny_store, "--max-images-per-request", "64", "--threads", "1", "--no-warmup"
    ) as proc:
        yield proc
