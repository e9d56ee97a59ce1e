"""Prometheus metrics, one CollectorRegistry per app so apps (and tests) never share counters."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REFUSAL_REASONS = ("queue_full", "deadline", "bad_request", "draining", "client_gone")

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

# The *_created series only add noise to every scrape.
disable_created_metrics()


class ServiceMetrics:
    """All ``gan_serve_*`` metrics; names and labels are documented in docs/SERVICE.md."""

    def __init__(self) -> None:
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
            "gan_serve_queue_depth_images", "Images waiting in the batcher", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "gan_serve_requests_in_flight", "HTTP requests being handled", registry=r
        )
        self.refusals = Counter(
            "gan_serve_refusals", "Requests refused, by reason", ["model", "reason"], registry=r
        )
        self.model_info = Gauge(
            "gan_serve_model_info",
            "Loaded model versions (value 1) and their execution provider",
            ["model", "version", "provider"],
            registry=r,
        )

    def refuse(self, model: str, reason: str) -> None:
        self.refusals.labels(model=model, reason=reason).inc()

    def set_model_info(self, model: str, version: int, provider: str) -> None:
        """Show exactly one series per model: drop the previous version's series."""
        for sample_labels in list(self._info_labels()):
            if sample_labels[0] == model:
                self.model_info.remove(*sample_labels)
        self.model_info.labels(model=model, version=str(version), provider=provider).set(1)

    def _info_labels(self) -> list[tuple[str, ...]]:
        return [
            (s.labels["model"], s.labels["version"], s.labels["provider"])
            for metric in self.model_info.collect()
            for s in metric.samples
        ]

    def render(self) -> bytes:
        return generate_latest(self.registry)
