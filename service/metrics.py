"""Prometheus metrics, one CollectorRegistry per app so apps (and tests) never share counters.

Across processes (``--workers`` > 1) every process writes its samples to files in one
directory (prometheus_client's multiprocess mode) and any front end's ``/metrics`` reads them
all: counters and histograms sum over processes; the two gauges are ``livesum`` (live
processes' values added up); ``gan_serve_model_info`` is not a file-backed gauge but read at
scrape time from the answering front end's view of the served versions, which every front
end shares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REFUSAL_REASONS = ("queue_full", "deadline", "bad_request", "draining", "client_gone")

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics", "mark_process_dead"]
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series only add noise to every scrape.
disable_created_metrics()


class ServiceMetrics:
    """All ``gan_serve_*`` metrics; names and labels are documented in docs/SERVICE.md."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            # Chosen per metric at construction: samples go to files in this directory.
            os.environ[MULTIPROC_ENV] = multiprocess_dir
            values.ValueClass = values.MultiProcessValue()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gan_serve_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gan_serve_request_duration_seconds",
            "Time from request start to response end",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "gan_serve_queue_wait_seconds",
            "Time a request's first image waited in the batcher queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "gan_serve_inference_duration_seconds",
            "onnxruntime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_duration = Histogram(
            "gan_serve_encode_duration_seconds",
            "Time to encode one response body",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gan_serve_batch_size_images",
            "Images per inference batch (before padding)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.images_generated = Counter(
            "gan_serve_images_generated", "Images computed and delivered", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "gan_serve_queue_depth_images",
            "Images waiting in the batcher",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "gan_serve_requests_in_flight",
            "HTTP requests being handled",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.refusals = Counter(
            "gan_serve_refusals", "Requests refused, by reason", ["model", "reason"], registry=r
        )
        self._model_info: dict[str, tuple[int, str]] = {}  # model -> (version, provider)
        r.register(_ModelInfo(self._model_info))

    def refuse(self, model: str, reason: str) -> None:
        self.refusals.labels(model=model, reason=reason).inc()

    def set_model_info(self, model: str, version: int, provider: str) -> None:
        """Exactly one series per model: the version it serves now."""
        self._model_info[model] = (version, provider)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, self.multiprocess_dir)
        every_process.register(_ModelInfo(self._model_info))
        return generate_latest(every_process)


class _ModelInfo:
    """``gan_serve_model_info``: loaded model versions, read at scrape time."""

    def __init__(self, served: dict[str, tuple[int, str]]) -> None:
        self.served = served

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for model, (version, provider) in sorted(self.served.items()):
            family.add_metric([model, str(version), provider], 1)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "gan_serve_model_info",
            "Loaded model versions (value 1) and their execution provider",
            labels=["model", "version", "provider"],
        )
