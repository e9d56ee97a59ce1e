"""HTTP clients for a running gan-serve service, sync (:class:`GanClient`) and async
(:class:`AsyncGanClient`).

Both speak the service's Open Inference Protocol endpoint (``POST /v2/models/{name}/infer``)
with the binary tensor data extension: latents go up and uint8 images come back as raw
bytes, so no image codec runs on either side. Seeds become latents on the client with the
project's documented seed-to-latent map, so "seed 7, label 3" is the same image here, in
the service's own endpoints and in the trainer's sample grids.
"""

from __future__ import annotations

import asyncio
import io
import json
import numbers
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import numpy as np

from service.manifest import MAX_SEED, TruncationSpec, seed_contract_latents

DEFAULT_CHUNK = 256
RETRY_STATUSES = frozenset({502, 503, 504})
HEADER_LENGTH = "Inference-Header-Content-Length"


class GanServeError(RuntimeError):
    """The service refused or failed a request; carries its status and error message."""

    def __init__(self, message: str, status_code: int | None = None, body: Any = None):
        super().__init__(message if status_code is None else f"HTTP {status_code}: {message}")
        self.message = message
        self.status_code = status_code
        self.body = body


class GanServeUnavailable(GanServeError):
    """The service stayed overloaded (503) or unreachable for every retry."""


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know of a served model, read from its v2 metadata."""

    name: str
    version: str
    nz: int
    image_size: int
    channels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    kind: str = "noise-to-image"  # or "text-to-image": captions instead of labels
    truncation: TruncationSpec | None = None  # resample truncation (BigGAN), from the metadata

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def takes_text(self) -> bool:
        return self.kind == "text-to-image"

    def seed_latents(self, seeds: Sequence[int], truncation: float | None = None) -> np.ndarray:
        """The latents the service itself would feed the model for these seeds and psi (the
        seed routes' rule, resample truncation included), float32 [n, nz]."""
        check_truncation(truncation)
        return seed_contract_latents(self.truncation, self.nz, list(seeds), truncation)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ModelInfo:
        inputs = {t["name"]: t for t in meta.get("inputs", [])}
        outputs = {t["name"]: t for t in meta.get("outputs", [])}
        params = meta.get("parameters") or {}
        _, height, _, channels = outputs["image"]["shape"]
        num_classes = int(params.get("num_classes", 0))
        if "label" in inputs and num_classes <= 0:
            raise GanServeError("conditional model metadata lacks parameters.num_classes")
        versions = meta.get("versions") or [""]
        try:
            spec = params.get("truncation")
            truncation = None if spec is None else TruncationSpec.model_validate(spec)
        except ValueError as exc:
            raise GanServeError(f"model metadata has an unreadable truncation: {exc}") from exc
        return cls(
            name=meta["name"],
            version=str(versions[-1]),
            nz=int(inputs["z"]["shape"][1]),
            image_size=int(height),
            channels=int(channels),
            num_classes=num_classes if "label" in inputs else 0,
            class_names=list(params.get("class_names", [])),
            kind=str(params.get("kind", "noise-to-image")),
            truncation=truncation,
        )


# --- request planning shared by both clients -----------------------------------------------


def plan_labels(
    seeds: np.ndarray, labels: int | Sequence[int] | np.ndarray | None, info: ModelInfo
) -> np.ndarray | None:
    """Resolve the ``labels`` argument to an int64 array, one per seed (None: unconditional).

    An int means every image gets that class; None on a conditional model gives seed s the
    class ``s mod num_classes``, as the service's own endpoints do, so consecutive seeds
    cycle through every class."""
    n = len(seeds)
    if not info.conditional:
        if labels is not None:
            raise ValueError(f"model {info.name!r} is unconditional; do not pass labels")
        return None
    if labels is None:
        out = (np.asarray(seeds, dtype=np.uint64) % info.num_classes).astype(np.int64)
    elif np.isscalar(labels):
        out = np.full(n, int(labels), dtype=np.int64)
    else:
        out = np.asarray(labels, dtype=np.int64).reshape(-1)
        if out.shape[0] != n:
            raise ValueError(f"labels has {out.shape[0]} entries, expected n={n}")
    bad = out[(out < 0) | (out >= info.num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is outside 0..{info.num_classes - 1}")
    return out


def check_truncation(psi: float | None) -> None:
    """psi as the service accepts it: None (the model's default) or a number in [0, 1]."""
    if psi is None:
        return
    if isinstance(psi, bool) or not isinstance(psi, numbers.Real) or not 0.0 <= psi <= 1.0:
        raise ValueError(f"truncation must be a number between 0 and 1, got {psi!r}")


def plan_seeds(n: int, seed: int | None) -> np.ndarray:
    """Image i gets seed ``seed + i``; a missing base seed is drawn at random."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    base = random.randrange(0, MAX_SEED - n) if seed is None else int(seed)
    if base < 0 or base + n - 1 > MAX_SEED:
        raise ValueError(f"seeds {base}..{base + n - 1} leave 0..{MAX_SEED}")
    return np.arange(base, base + n, dtype=np.int64)


def encode_infer_request(
    z: np.ndarray, labels: np.ndarray | None, captions: Sequence[str] | None = None
) -> tuple[bytes, int]:
    """Build a binary-extension infer body: JSON header then raw little-endian tensors; a
    text-to-image model's captions go in the header as a BYTES input of JSON strings."""
    z = np.ascontiguousarray(z, dtype="<f4")
    inputs = [_binary_input("z", "FP32", list(z.shape), z.nbytes)]
    blobs = [z.tobytes()]
    if labels is not None:
        lab = np.ascontiguousarray(labels, dtype="<i8")
        inputs.append(_binary_input("label", "INT64", [int(lab.shape[0])], lab.nbytes))
        blobs.append(lab.tobytes())
    if captions is not None:
        texts = list(captions)
        inputs.append({"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts})
    header = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "image", "parameters": {"binary_data": True}}]}
    ).encode()
    return header + b"".join(blobs), len(header)


def _binary_input(name: str, dtype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": dtype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


def decode_infer_response(response: httpx.Response) -> np.ndarray:
    """Pull the ``image`` output out of a v2 infer response, binary or JSON."""
    body = response.content
    length = response.headers.get(HEADER_LENGTH)
    header = json.loads(body[: int(length)] if length is not None else body)
    offset = int(length) if length is not None else 0
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out["name"] == "image":
            shape = tuple(out["shape"])
            if size is None:
                return np.asarray(out["data"], dtype=np.uint8).reshape(shape)
            return np.frombuffer(body, np.uint8, int(size), offset).reshape(shape).copy()
        offset += int(size or 0)
    raise GanServeError("response has no 'image' output", response.status_code, header)


def error_message(response: httpx.Response) -> str:
    """The server's own words: ``{"error": ...}``, FastAPI's ``{"detail": ...}``, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                value = body[key]
                if isinstance(value, dict) and isinstance(value.get("message"), str):
                    return value["message"]  # the service's {"error": {"code", "message"}}
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)


def retry_delay(response: httpx.Response | None, attempt: int, backoff: float, cap: float) -> float:
    """Seconds to wait before the next try: Retry-After when the server sent one (seconds
    or an HTTP date), else exponential backoff with jitter."""
    if response is not None:
        value = response.headers.get("Retry-After")
        if value:
            try:
                return min(cap, max(0.0, float(value)))
            except ValueError:
                try:
                    when = parsedate_to_datetime(value).timestamp()
                    return min(cap, max(0.0, when - time.time()))
                except (TypeError, ValueError):
                    pass
    return min(cap, backoff * (2**attempt)) * (0.5 + random.random() / 2)


def translate_parts(images: Any) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Images to upload to ``/translate`` as multipart file parts: each a path or bytes (sent
    as they are), a PIL image, or a uint8 array [H, W] / [H, W, C] (both encoded as PNG)."""
    from pathlib import Path

    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype == np.uint8:
        images = list(images) if images.ndim == 4 or images.shape[-1] not in (1, 3, 4) else [images]
    parts = []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            data = Path(image).read_bytes()
        elif isinstance(image, bytes):
            data = image
        else:
            if isinstance(image, np.ndarray):
                pixels = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
                image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
        kind = "image/jpeg" if data.startswith(b"\xff\xd8\xff") else "image/png"
        parts.append(("images", (f"{i}.img", data, kind)))
    if not parts:
        raise ValueError("no images to translate")
    return parts


def translate_form(
    parts: list[tuple[str, tuple[str, bytes, str]]], direction: str
) -> dict[str, Any]:
    """The multipart request of one ``/translate`` chunk (answer as ``.npy``)."""
    return {"files": parts, "data": {"direction": direction, "format": "npy"}}


def decode_npy(response: httpx.Response) -> np.ndarray:
    """A ``format=npy`` answer -> its uint8 array."""
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def to_pil(images: np.ndarray) -> list[Any]:
    """uint8 [n,H,W,C] -> list of PIL images (mode L for one channel, RGB for three)."""
    from PIL import Image

    if images.shape[-1] == 1:
        return [Image.fromarray(img[:, :, 0], mode="L") for img in images]
    return [Image.fromarray(img, mode="RGB") for img in images]


def check_text(info: ModelInfo, text: object) -> None:
    """A text-to-image model needs captions, and only such a model takes them."""
    if info.takes_text and text is None:
        raise ValueError(f"model {info.name!r} draws from captions; pass text")
    if text is not None and not info.takes_text:
        raise ValueError(f"model {info.name!r} is {info.kind}; it takes no text")


def plan_captions(text: str | Sequence[str], n: int) -> list[str]:
    """One caption per image: a single caption is repeated n times."""
    captions = [text] if isinstance(text, str) else list(text)
    if len(captions) == 1:
        return captions * n
    if len(captions) != n:
        raise ValueError(f"give one caption for all {n} images or one per image")
    return captions


def _caption_chunk(captions: Sequence[str] | None, part: slice) -> list[str] | None:
    return None if captions is None else list(captions[part])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class _Base:
    """Settings and URL building shared by the sync and async clients."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str = "mnist-cdcgan",
        *,
        version: int | str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        chunk_size: int = DEFAULT_CHUNK,
        headers: dict[str, str] | None = None,
    ):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.url = url.rstrip("/")
        self.model = model
        self.version = None if version is None else str(version)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk_size = chunk_size
        self.headers = dict(headers or {})
        self._info: ModelInfo | None = None
        self.retry_delays: list[float] = []  # every wait before a retry, for logs and tests

    def _model_path(self) -> str:
        path = f"/v2/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    def _translate_path(self) -> str:
        return f"/v1/models/{self.model}/translate"

    def _should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        if attempt >= self.max_retries:
            return False
        return response is None or response.status_code in RETRY_STATUSES

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            message = error_message(response)
            cls = GanServeUnavailable if response.status_code in RETRY_STATUSES else GanServeError
            raise cls(message, response.status_code, response.text)


class GanClient(_Base):
    """Blocking client. ``generate(n, labels, seed)`` -> uint8 array [n, H, W, C].

    Usable as a context manager; one keep-alive connection pool per client."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str = "mnist-cdcgan",
        *,
        transport: httpx.BaseTransport | None = None,
        **kw: Any,
    ):
        super().__init__(url, model, **kw)
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, headers=self.headers, transport=transport
        )

    def __enter__(self) -> GanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                error = exc
            if response is not None and response.status_code not in RETRY_STATUSES:
                self._raise_for(response)
                return response
            if not self._should_retry(attempt, response):
                if response is not None:
                    self._raise_for(response)
                raise GanServeUnavailable(f"{method} {path} failed: {error}") from error
            delay = retry_delay(response, attempt, self.backoff, self.max_backoff)
            self.retry_delays.append(delay)
            time.sleep(delay)
            attempt += 1

    def info(self) -> ModelInfo:
        """The model's metadata (fetched once, then cached)."""
        if self._info is None:
            self._info = ModelInfo.from_metadata(self._request("GET", self._model_path()).json())
        return self._info

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self._model_path()}/ready").status_code == 200
        except httpx.TransportError:
            return False

    def generate_latents(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
    ) -> np.ndarray:
        """One infer call per chunk of ``chunk_size`` latents; returns uint8 [n,H,W,C]."""
        parts = []
        for part in _chunks(len(z), self.chunk_size):
            body, length = encode_infer_request(
                z[part], None if labels is None else labels[part], _caption_chunk(captions, part)
            )
            response = self._request(
                "POST",
                f"{self._model_path()}/infer",
                content=body,
                headers={HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"},
            )
            parts.append(decode_infer_response(response))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def generate_seeds(
        self,
        seeds: Sequence[int],
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
        *,
        truncation: float | None = None,
    ) -> np.ndarray:
        """Images for explicit seeds (and labels, or captions), in order: the same images as
        the service's seed routes with the same ``truncation`` (psi)."""
        z = self.info().seed_latents(seeds, truncation)
        return self.generate_latents(z, labels, captions)

    def generate(
        self,
        n: int,
        labels: int | Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
        *,
        text: str | Sequence[str] | None = None,
        truncation: float | None = None,
        pil: bool = False,
    ) -> np.ndarray | list[Any]:
        """n images; image i comes from seed ``seed + i`` (see :func:`plan_labels` for labels).
        ``text``: a text-to-image model's caption for all images, or one per image.
        ``truncation``: psi in [0, 1], as the service's ``truncation`` field (None: the
        model's default)."""
        info = self.info()
        seeds = plan_seeds(n, seed)
        check_text(info, text)
        if text is not None:
            images = self.generate_seeds(seeds, None, plan_captions(text, n), truncation=truncation)
        else:
            images = self.generate_seeds(
                seeds, plan_labels(seeds, labels, info), truncation=truncation
            )
        return to_pil(images) if pil else images

    def translate(
        self, images: Any, direction: str = "A->B", *, pil: bool = False
    ) -> np.ndarray | list[Any]:
        """Images through an image-to-image model (``POST /v1/models/{name}/translate``),
        ``chunk_size`` per request -> uint8 [n, S, S, C] at the model's size and mode."""
        parts = translate_parts(images)
        out = []
        for chunk in _chunks(len(parts), self.chunk_size):
            response = self._request(
                "POST", self._translate_path(), **translate_form(parts[chunk], direction)
            )
            out.append(decode_npy(response))
        result = np.concatenate(out) if len(out) > 1 else out[0]
        return to_pil(result) if pil else result


class AsyncGanClient(_Base):
    """asyncio client with the same API as :class:`GanClient`; chunks are fetched
    concurrently, at most ``max_concurrency`` at a time."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str = "mnist-cdcgan",
        *,
        max_concurrency: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        **kw: Any,
    ):
        super().__init__(url, model, **kw)
        self.max_concurrency = max_concurrency
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, headers=self.headers, transport=transport
        )

    async def __aenter__(self) -> AsyncGanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                error = exc
            if response is not None and response.status_code not in RETRY_STATUSES:
                self._raise_for(response)
                return response
            if not self._should_retry(attempt, response):
                if response is not None:
                    self._raise_for(response)
                raise GanServeUnavailable(f"{method} {path} failed: {error}") from error
            delay = retry_delay(response, attempt, self.backoff, self.max_backoff)
            self.retry_delays.append(delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def info(self) -> ModelInfo:
        if self._info is None:
            response = await self._request("GET", self._model_path())
            self._info = ModelInfo.from_metadata(response.json())
        return self._info

    async def ready(self) -> bool:
        try:
            return (await self._http.get(f"{self._model_path()}/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def generate_latents(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
    ) -> np.ndarray:
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(part: slice) -> np.ndarray:
            body, length = encode_infer_request(
                z[part], None if labels is None else labels[part], _caption_chunk(captions, part)
            )
            async with gate:
                response = await self._request(
                    "POST",
                    f"{self._model_path()}/infer",
                    content=body,
                    headers={
                        HEADER_LENGTH: str(length),
                        "Content-Type": "application/octet-stream",
                    },
                )
            return decode_infer_response(response)

        parts = await asyncio.gather(*(one(p) for p in _chunks(len(z), self.chunk_size)))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def generate_seeds(
        self,
        seeds: Sequence[int],
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
        *,
        truncation: float | None = None,
    ) -> np.ndarray:
        z = (await self.info()).seed_latents(seeds, truncation)
        return await self.generate_latents(z, labels, captions)

    async def generate(
        self,
        n: int,
        labels: int | Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
        *,
        text: str | Sequence[str] | None = None,
        truncation: float | None = None,
        pil: bool = False,
    ) -> np.ndarray | list[Any]:
        info = await self.info()
        seeds = plan_seeds(n, seed)
        check_text(info, text)
        if text is not None:
            images = await self.generate_seeds(
                seeds, None, plan_captions(text, n), truncation=truncation
            )
        else:
            images = await self.generate_seeds(
                seeds, plan_labels(seeds, labels, info), truncation=truncation
            )
        return to_pil(images) if pil else images

    async def translate(
        self, images: Any, direction: str = "A->B", *, pil: bool = False
    ) -> np.ndarray | list[Any]:
        """As :meth:`GanClient.translate`; the ``chunk_size`` requests run concurrently (at
        most ``max_concurrency`` at a time) and come back in order."""
        parts = translate_parts(images)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(chunk: slice) -> np.ndarray:
            async with gate:
                response = await self._request(
                    "POST", self._translate_path(), **translate_form(parts[chunk], direction)
                )
            return decode_npy(response)

        out = await asyncio.gather(*(one(c) for c in _chunks(len(parts), self.chunk_size)))
        result = np.concatenate(out) if len(out) > 1 else out[0]
        return to_pil(result) if pil else result
