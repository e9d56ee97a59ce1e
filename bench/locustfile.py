"""Locust load test for any gan-serve deployment: single images, bulk, a mix, and the KServe v2
(Open Inference Protocol) route.

Headless, against a deployment you run::

    locust -f bench/locustfile.py --headless -H http://127.0.0.1:8000 \
        -u 64 -r 16 -t 60s --csv locust-out SingleImageUser

Pick the user class(es) by name at the end (``SingleImageUser``, ``BulkUser``, ``MixedUser``,
``KServeUser``); environment: ``GAN_MODEL`` (default ``mnist-cdcgan``) and ``GAN_BULK_N`` (64).
Every user sends a fresh seed per request, so no cache can answer for the model.
"""

from __future__ import annotations

import itertools
import os
import random

from locust import FastHttpUser, between, events, task

MODEL = os.environ.get("GAN_MODEL", "mnist-cdcgan")
BULK_N = int(os.environ.get("GAN_BULK_N", "64"))
_seeds = itertools.count(random.randrange(1 << 40))


class _GanUser(FastHttpUser):
    """Shared set-up: read the model's shape once per user, from the service itself."""

    abstract = True
    wait_time = between(0, 0)  # closed loop: each user sends its next request at once
    nz = 100
    num_classes = 0

    def on_start(self) -> None:
        with self.client.get(
            f"/v1/models/{MODEL}", name="/v1/models/[name]", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"model {MODEL!r} not served: {response.status_code}")
                return
            info = response.json()
            self.nz = int(info["nz"])
            self.num_classes = int(info["num_classes"])

    def _label_query(self, seed: int) -> str:
        return f"&label={seed % self.num_classes}" if self.num_classes else ""

    def single(self) -> None:
        seed = next(_seeds)
        with self.client.get(
            f"/v1/models/{MODEL}/generate?seed={seed}{self._label_query(seed)}",
            name="GET generate n=1 png",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and not response.content.startswith(b"\x89PNG"):
                response.failure("not a PNG")

    def bulk(self) -> None:
        body = {"n": BULK_N, "seed": next(_seeds), "format": "npy"}
        with self.client.post(
            f"/v1/models/{MODEL}/generate",
            json=body,
            name=f"POST generate n={BULK_N} npy",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and not response.content.startswith(b"\x93NUMPY"):
                response.failure("not an npy file")

    def kserve(self) -> None:
        rng = random.Random(next(_seeds))
        inputs = [
            {
                "name": "z",
                "datatype": "FP32",
                "shape": [1, self.nz],
                "data": [rng.gauss(0.0, 1.0) for _ in range(self.nz)],
            }
        ]
        if self.num_classes:
            label = rng.randrange(self.num_classes)
            inputs.append({"name": "label", "datatype": "INT64", "shape": [1], "data": [label]})
        self.client.post(
            f"/v2/models/{MODEL}/infer", json={"inputs": inputs}, name="POST /v2 infer"
        )


class SingleImageUser(_GanUser):
    """One PNG per request by seed (GET, cacheable URL): the interactive workload."""

    @task
    def generate_one(self) -> None:
        self.single()


class BulkUser(_GanUser):
    """``GAN_BULK_N`` images per request as npy: the dataset-building workload."""

    @task
    def generate_many(self) -> None:
        self.bulk()


class MixedUser(_GanUser):
    """Mostly single images, some bulk, some KServe-style calls."""

    @task(8)
    def generate_one(self) -> None:
        self.single()

    @task(1)
    def generate_many(self) -> None:
        self.bulk()

    @task(1)
    def infer_v2(self) -> None:
        self.kserve()


class KServeUser(_GanUser):
    """Open Inference Protocol ``POST /v2/models/{name}/infer`` with JSON tensors."""

    @task
    def infer_v2(self) -> None:
        self.kserve()


@events.quitting.add_listener
def _fail_on_errors(environment, **_kwargs) -> None:  # noqa: ANN001 - locust's signature
    """Exit non-zero when any request failed, so a CI step can gate on it."""
    if environment.stats.total.fail_ratio > 0:
        environment.process_exit_code = 1
