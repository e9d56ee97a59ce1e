"""Open Inference Protocol (KServe v2) REST endpoints over the same batcher as ``/v1``.

Implements health, server and model metadata, model readiness and inference, with JSON
tensors (nested or flat ``data``) and the binary tensor data extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` and
``binary_data_output``). A model has inputs ``z`` FP32 [-1, nz] (and ``label`` INT64 [-1]
when conditional) and one output ``image`` UINT8 [-1, H, W, C]. Errors follow the protocol's
shape, ``{"error": "<message>"}``, with 4xx for anything the client got wrong.
"""

from __future__ import annotations

import gzip
import json
import math
import time
import zlib
from importlib import metadata as pkg_metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from service.context import context
from service.manifest import IMAGE_OUTPUT, LABEL_INPUT, LATENT_INPUT, Manifest
from service.registry import LoadedModel, ModelNotFound

router = APIRouter(tags=["open-inference-protocol"])

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
# Protocol datatype -> numpy dtype (little-endian, as the binary extension requires).
DATATYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class V2Error(Exception):
    """Answered as ``{"error": message}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- app state access -----------------------------------------------------------------------


def _count_bad_request(request: Request, model: str) -> None:
    context(request).metrics.refuse(model, "bad_request")


def _lookup(request: Request, name: str, version: str | None) -> LoadedModel:
    """The loaded model, or V2Error 404 naming what is missing."""
    try:
        loaded = context(request).registry.get(name)
    except ModelNotFound:
        raise V2Error(404, f"unknown model '{name}'") from None
    if version is not None and version != str(loaded.version):
        raise V2Error(
            404,
            f"model '{name}' has no version '{version}' loaded (serving version {loaded.version})",
        )
    return loaded


def _server_ready(request: Request) -> bool:
    ctx = context(request)
    return (
        not ctx.lifecycle.draining and ctx.registry.state == "ready" and bool(ctx.registry.models)
    )


# --- metadata ------------------------------------------------------------------------------


def model_metadata(manifest: Manifest, version: int | str) -> dict[str, Any]:
    """``$metadata_model_response``; ``parameters`` adds what a client needs beyond shapes."""
    inputs = [{"name": LATENT_INPUT, "datatype": "FP32", "shape": [-1, manifest.nz]}]
    if manifest.conditional:
        inputs.append({"name": LABEL_INPUT, "datatype": "INT64", "shape": [-1]})
    size, channels = manifest.image_size, manifest.channels
    return {
        "name": manifest.name,
        "versions": [str(version)],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": [
            {"name": IMAGE_OUTPUT, "datatype": "UINT8", "shape": [-1, size, size, channels]}
        ],
        "parameters": {
            "num_classes": manifest.num_classes,
            "class_names": list(manifest.class_names),
            "image_size": size,
            "channels": channels,
            "latent": "seed s -> numpy PCG64(s).standard_normal(nz, float32)",
        },
    }


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    try:
        version = pkg_metadata.version("gan-serve")
    except pkg_metadata.PackageNotFoundError:
        version = "0"
    return {"name": "gan-serve", "version": version, "extensions": EXTENSIONS}


@router.get("/v2/health/live")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def server_ready(request: Request) -> Response:
    # The protocol answers readiness with the status: 200 true, 4xx false.
    if _server_ready(request):
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": "server is not ready"}, status_code=400)


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def get_model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    try:
        loaded = _lookup(request, name, version)
    except V2Error as exc:
        return error(exc.status, exc.message)
    return JSONResponse(model_metadata(loaded.manifest, loaded.version))


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def get_model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        _lookup(request, name, version)
    except V2Error as exc:
        return error(exc.status, exc.message)
    ready = _server_ready(request)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)


# --- inference request parsing --------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """JSON header and the binary tail after it (empty without the extension header)."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise V2Error(
                400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if not 0 < length <= len(body):
            raise V2Error(400, f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        json_part, tail = body[:length], body[length:]
    try:
        header = json.loads(json_part)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise V2Error(400, f"request JSON is invalid: {exc}") from None
    if not isinstance(header, dict):
        raise V2Error(400, "request JSON must be an object")
    return header, memoryview(tail)


def _flatten(data: Any, out: list[Any], path: str) -> None:
    if isinstance(data, list):
        for i, item in enumerate(data):
            _flatten(item, out, f"{path}[{i}]")
    else:
        out.append(data)


def _json_values(data: Any, datatype: str, field: str) -> np.ndarray:
    """``data`` (nested or flat) -> 1-D array of ``datatype``; wrong element types -> 400."""
    if not isinstance(data, list):
        raise V2Error(400, f"{field}.data must be an array")
    flat: list[Any] = []
    try:
        _flatten(data, flat, field)
    except RecursionError:
        raise V2Error(400, f"{field}.data is nested too deeply") from None
    if datatype.startswith("FP"):
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
        kind = "numbers"
    elif datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
        kind = "booleans"
    else:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
        kind = "integers"
    if not ok:
        raise V2Error(400, f"{field}.data must hold only {kind} for datatype {datatype}")
    try:
        return np.array(flat, dtype=DATATYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise V2Error(400, f"{field}.data does not fit {datatype}: {exc}") from None


def read_tensor(
    spec: Any, index: int, tail: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    """One ``$request_input`` -> (name, array shaped as declared, new binary offset)."""
    field = f"inputs[{index}]"
    if not isinstance(spec, dict):
        raise V2Error(400, f"{field} must be an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise V2Error(400, f"{field}.name must be a string")
    field = f"input '{name}'"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(400, f"{field}: shape must be a list of non-negative integers")
    if datatype not in DATATYPES:
        raise V2Error(400, f"{field}: unknown datatype {datatype!r}")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error(400, f"{field}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise V2Error(400, f"{field}: give either data or binary_data_size, not both")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise V2Error(400, f"{field}: binary_data_size must be a non-negative integer")
        itemsize = np.dtype(DATATYPES[datatype]).itemsize
        if size != count * itemsize:
            raise V2Error(
                400,
                f"{field}: binary_data_size is {size} bytes but shape {shape} of {datatype} "
                f"needs {count * itemsize}",
            )
        if offset + size > len(tail):
            raise V2Error(
                400, f"{field}: binary data ends at byte {offset + size}, body has {len(tail)}"
            )
        values = np.frombuffer(tail[offset : offset + size], dtype=DATATYPES[datatype])
        offset += size
    else:
        if "data" not in spec:
            raise V2Error(400, f"{field}: needs data or parameters.binary_data_size")
        values = _json_values(spec["data"], datatype, field)
        if values.size != count:
            raise V2Error(
                400, f"{field}: data has {values.size} elements but shape {shape} needs {count}"
            )
    return name, values.reshape(shape), offset


def parse_inputs(
    header: dict[str, Any], tail: memoryview, manifest: Manifest, max_images: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate the request against the model's signature -> (z [n, nz], labels [n] | None)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "inputs must be a non-empty array")
    expected = {LATENT_INPUT: "FP32"}
    if manifest.conditional:
        expected[LABEL_INPUT] = "INT64"
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        name, values, offset = read_tensor(spec, i, tail, offset)
        if name not in expected:
            raise V2Error(
                400,
                f"unknown input '{name}'; model '{manifest.name}' takes {sorted(expected)}",
            )
        if name in tensors:
            raise V2Error(400, f"input '{name}' is given twice")
        if spec["datatype"] != expected[name]:
            raise V2Error(
                400, f"input '{name}' must have datatype {expected[name]}, got {spec['datatype']}"
            )
        tensors[name] = values
    if offset != len(tail):
        raise V2Error(400, f"body has {len(tail) - offset} bytes of binary data no input claims")
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise V2Error(400, f"missing input '{missing[0]}'")

    z = tensors[LATENT_INPUT]
    if z.ndim != 2 or z.shape[1] != manifest.nz:
        raise V2Error(400, f"input 'z' must have shape [n, {manifest.nz}], got {list(z.shape)}")
    n = z.shape[0]
    if not 1 <= n <= max_images:
        raise V2Error(400, f"input 'z' has batch size {n}; allowed 1..{max_images}")
    if not np.isfinite(z).all():
        raise V2Error(400, "input 'z' must hold finite numbers")
    labels = tensors.get(LABEL_INPUT)
    if labels is not None:
        if labels.shape != (n,):
            raise V2Error(
                400, f"input 'label' must have shape [{n}] to match 'z', got {list(labels.shape)}"
            )
        bad = labels[(labels < 0) | (labels >= manifest.num_classes)]
        if bad.size:
            raise V2Error(
                400, f"input 'label' has {int(bad[0])}; must be 0..{manifest.num_classes - 1}"
            )
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return np.ascontiguousarray(z, dtype=np.float32), labels


def wants_binary(header: dict[str, Any]) -> bool:
    """Whether ``image`` goes back as binary: its ``binary_data`` output parameter, else the
    request-wide ``binary_data_output`` (default JSON)."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error(400, "parameters must be an object")
    binary = params.get("binary_data_output", False)
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise V2Error(400, "outputs must be an array")
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise V2Error(400, f"outputs[{i}] must be an object with a name")
            if out["name"] != IMAGE_OUTPUT:
                raise V2Error(400, f"unknown output '{out['name']}'; the model has 'image'")
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise V2Error(400, f"outputs[{i}].parameters must be an object")
            binary = out_params.get("binary_data", binary)
    if not isinstance(binary, bool):
        raise V2Error(400, "binary_data and binary_data_output must be booleans")
    return binary


def deadline_from(header: dict[str, Any], default_s: float) -> float:
    """``parameters.timeout`` in microseconds (as Triton clients send it) or the default."""
    timeout = (header.get("parameters") or {}).get("timeout")
    if timeout is None:
        return time.monotonic() + default_s
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise V2Error(400, "parameters.timeout must be a positive number of microseconds")
    return time.monotonic() + min(default_s, timeout / 1e6)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, decompressed if sent with Content-Encoding; 413 past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise V2Error(413, f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        else:
            raise V2Error(415, f"unsupported Content-Encoding {encoding!r}")
    except (OSError, zlib.error, EOFError) as exc:
        raise V2Error(400, f"body is not valid {encoding}: {exc}") from None
    if len(body) > limit:
        raise V2Error(413, f"request body is larger than {limit} bytes once decompressed")
    return body


def encode_response(
    images: np.ndarray, header: dict[str, Any], name: str, version: Any, binary: bool
) -> Response:
    output: dict[str, Any] = {
        "name": IMAGE_OUTPUT,
        "datatype": "UINT8",
        "shape": list(images.shape),
    }
    body: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": [output]}
    if isinstance(header.get("id"), str):
        body["id"] = header["id"]
    if not binary:
        output["data"] = images.reshape(-1).tolist()
        return JSONResponse(body)
    output["parameters"] = {"binary_data_size": int(images.nbytes)}
    head = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        head + np.ascontiguousarray(images).tobytes(),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    try:
        loaded = _lookup(request, name, version)
    except V2Error as exc:
        return error(exc.status, exc.message)
    settings = context(request).settings
    max_images = settings.max_images_per_request
    limit = settings.max_body_bytes
    timeout_s = settings.request_timeout_s
    try:
        body = await read_body(request, limit)
        header, tail = split_body(body, request.headers.get(HEADER_LENGTH))
        z, labels = parse_inputs(header, tail, loaded.manifest, max_images)
        binary = wants_binary(header)
        deadline = deadline_from(header, timeout_s)
    except V2Error as exc:
        _count_bad_request(request, name)
        return error(exc.status, exc.message, exc.headers)
    try:
        images = await loaded.batcher.submit(z, labels, deadline)
    except QueueFull as exc:
        return error(
            503,
            f"model '{name}' is overloaded ({exc}); retry later",
            {"Retry-After": str(exc.retry_after)},
        )
    except DeadlineExceeded:
        return error(504, f"request waited longer than its deadline for model '{name}'")
    except BatcherClosed:
        return error(503, f"model '{name}' is being replaced or shut down", {"Retry-After": "1"})
    return encode_response(images, header, name, loaded.version, binary)
