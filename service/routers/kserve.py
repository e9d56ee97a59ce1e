"""Open Inference Protocol (KServe v2) REST endpoints over the same batcher as ``/v1``.

Implements health, server and model metadata, model readiness and inference, with JSON
tensors (nested or flat ``data``) and the binary tensor data extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` and
``binary_data_output``). A model has inputs ``z`` FP32 [-1, nz] (and ``label`` INT64 [-1]
when conditional) and one output ``image`` UINT8 [-1, H, W, C]. Errors follow the protocol's
shape, ``{"error": "<message>"}``, with 4xx for anything the client got wrong.
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from importlib import metadata as pkg_metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..context import context
from ..errors import V2_ERROR_RESPONSES, ServiceError
from ..manifest import IMAGE_OUTPUT, LABEL_INPUT, LATENT_INPUT, Manifest, latent_rule_text
from ..pipeline import (
    check_room,
    deadline,
    plan_image_tensors,
    plan_tensors,
    resolve,
    serving,
    submit,
)
from ..registry import LoadedModel
from .generate import waiter

router = APIRouter(tags=["open-inference-protocol"], responses=V2_ERROR_RESPONSES)

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


def v2_error(message: str, code: str = "invalid_value", field: str | None = None) -> ServiceError:
    """A refusal of a ``/v2`` request; the error table answers it as ``{"error": message}``
    (input errors with 400, as the protocol asks)."""
    return ServiceError(code, message, field)


# --- app state access -----------------------------------------------------------------------


async def _lookup(request: Request, name: str, version: str | None) -> LoadedModel:
    """The serving model, or a version already loaded beside it (never loaded here)."""
    ctx = context(request)
    if version is None:
        return serving(ctx, name)
    if not version.isascii() or not version.isdigit() or len(version) > 9:
        serving(ctx, name)
        raise v2_error(f"model '{name}' has no version '{version[:32]}'", "version_not_found")
    try:
        return await resolve(ctx, name, int(version))
    except ServiceError as exc:
        if exc.code not in ("forbidden", "version_not_found", "version_not_loaded"):
            raise
        loaded = serving(ctx, name)
        raise v2_error(
            f"model '{name}' has no version '{version}' loaded (serving version {loaded.version})",
            "version_not_loaded",
        ) from None


def _server_ready(request: Request) -> bool:
    ctx = context(request)
    return (
        not ctx.lifecycle.draining and ctx.registry.state == "ready" and bool(ctx.registry.models)
    )


# --- metadata ------------------------------------------------------------------------------


V2_DATATYPE = {"float32": "FP32", "int64": "INT64", "uint8": "UINT8"}


def _signature(manifest: Manifest) -> dict[str, str]:
    """The graph's input names and their v2 datatypes, from the manifest."""
    return {spec.name: V2_DATATYPE[spec.dtype] for spec in manifest.inputs}


def model_metadata(manifest: Manifest, version: int | str) -> dict[str, Any]:
    """``$metadata_model_response``; ``parameters`` adds what a client needs beyond shapes."""
    inputs = [{"name": LATENT_INPUT, "datatype": "FP32", "shape": [-1, manifest.nz]}]
    if manifest.conditional:
        inputs.append({"name": LABEL_INPUT, "datatype": "INT64", "shape": [-1]})
    if manifest.translates:
        inputs = [
            {"name": spec.name, "datatype": V2_DATATYPE[spec.dtype], "shape": spec.shape}
            for spec in manifest.inputs
        ]
    if manifest.takes_text:
        from .kserve_text import text_metadata

        inputs = text_metadata(manifest)
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
            "latent": latent_rule_text(manifest.truncation),
            "kind": manifest.kind,
            **(
                {"truncation": manifest.truncation.model_dump()}
                if manifest.truncation is not None
                else {}
            ),
            **(
                {"domains": [manifest.translation.domain_a, manifest.translation.domain_b]}
                if manifest.translation is not None
                else {}
            ),
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
    loaded = await _lookup(request, name, version)
    return JSONResponse(model_metadata(loaded.manifest, loaded.version))


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def get_model_ready(request: Request, name: str, version: str | None = None) -> Response:
    await _lookup(request, name, version)
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
            raise v2_error(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < length <= len(body):
            raise v2_error(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        json_part, tail = body[:length], body[length:]
    try:
        header = json.loads(json_part)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise v2_error(f"request JSON is invalid: {exc}") from None
    if not isinstance(header, dict):
        raise v2_error("request JSON must be an object")
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
        raise v2_error(f"{field}.data must be an array")
    flat: list[Any] = []
    try:
        _flatten(data, flat, field)
    except RecursionError:
        raise v2_error(f"{field}.data is nested too deeply") from None
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
        raise v2_error(f"{field}.data must hold only {kind} for datatype {datatype}")
    try:
        return np.array(flat, dtype=DATATYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise v2_error(f"{field}.data does not fit {datatype}: {exc}") from None


def read_tensor(
    spec: Any, index: int, tail: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    """One ``$request_input`` -> (name, array shaped as declared, new binary offset)."""
    field = f"inputs[{index}]"
    if not isinstance(spec, dict):
        raise v2_error(f"{field} must be an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise v2_error(f"{field}.name must be a string")
    field = f"input '{name}'"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise v2_error(f"{field}: shape must be a list of non-negative integers")
    if datatype not in DATATYPES:
        raise v2_error(f"{field}: unknown datatype {datatype!r}")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise v2_error(f"{field}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise v2_error(f"{field}: give either data or binary_data_size, not both")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise v2_error(f"{field}: binary_data_size must be a non-negative integer")
        itemsize = np.dtype(DATATYPES[datatype]).itemsize
        if size != count * itemsize:
            raise v2_error(
                f"{field}: binary_data_size is {size} bytes but shape {shape} of {datatype} "
                f"needs {count * itemsize}",
            )
        if offset + size > len(tail):
            raise v2_error(
                f"{field}: binary data ends at byte {offset + size}, body has {len(tail)}"
            )
        values = np.frombuffer(tail[offset : offset + size], dtype=DATATYPES[datatype])
        offset += size
    else:
        if "data" not in spec:
            raise v2_error(f"{field}: needs data or parameters.binary_data_size")
        values = _json_values(spec["data"], datatype, field)
        if values.size != count:
            raise v2_error(
                f"{field}: data has {values.size} elements but shape {shape} needs {count}"
            )
    return name, values.reshape(shape), offset


def parse_inputs(
    header: dict[str, Any], tail: memoryview, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray | None]:
    """The request's tensors against the model's signature -> (z, labels | None); their shapes
    and values are checked by the pipeline's plan."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise v2_error("inputs must be a non-empty array")
    expected = _signature(manifest)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        name, values, offset = read_tensor(spec, i, tail, offset)
        if name not in expected:
            raise v2_error(
                f"unknown input '{name}'; model '{manifest.name}' takes {sorted(expected)}"
            )
        if name in tensors:
            raise v2_error(f"input '{name}' is given twice")
        if spec["datatype"] != expected[name]:
            raise v2_error(
                f"input '{name}' must have datatype {expected[name]}, got {spec['datatype']}"
            )
        tensors[name] = values
    if offset != len(tail):
        raise v2_error(f"body has {len(tail) - offset} bytes of binary data no input claims")
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise v2_error(f"missing input '{missing[0]}'")
    first, *rest = expected
    return tensors[first], tensors.get(rest[0]) if rest else None


def wants_binary(header: dict[str, Any]) -> bool:
    """Whether ``image`` goes back as binary: its ``binary_data`` output parameter, else the
    request-wide ``binary_data_output`` (default JSON)."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise v2_error("parameters must be an object")
    binary = params.get("binary_data_output", False)
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise v2_error("outputs must be an array")
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise v2_error(f"outputs[{i}] must be an object with a name")
            if out["name"] != IMAGE_OUTPUT:
                raise v2_error(f"unknown output '{out['name']}'; the model has 'image'")
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise v2_error(f"outputs[{i}].parameters must be an object")
            binary = out_params.get("binary_data", binary)
    if not isinstance(binary, bool):
        raise v2_error("binary_data and binary_data_output must be booleans")
    return binary


MAX_TIMEOUT_US = 10**12  # larger timeouts mean "no shorter than the default"


def timeout_from(header: dict[str, Any]) -> float | None:
    """``parameters.timeout`` in microseconds (as Triton clients send it), in seconds."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise v2_error("parameters must be an object")
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 < timeout < math.inf
    ):
        raise v2_error("parameters.timeout must be a positive number of microseconds")
    return min(timeout, MAX_TIMEOUT_US) / 1e6


DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
INFLATE_CHUNK = 64 * 1024


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress ``body`` a chunk at a time, stopping as soon as the output passes ``limit``:
    a small compressed body can never inflate to more than ``limit`` bytes in memory."""
    decompressor = zlib.decompressobj(DECOMPRESSORS[encoding])
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while data:
            chunk = decompressor.decompress(data, INFLATE_CHUNK)
            size += len(chunk)
            if size > limit:
                raise v2_error(
                    f"request body is larger than {limit} bytes once decompressed",
                    "body_too_large",
                    "body",
                )
            out.append(chunk)
            data = decompressor.unconsumed_tail
            if decompressor.eof:
                break
        if not decompressor.eof:
            raise v2_error(f"body is not valid {encoding}: truncated")
    except zlib.error as exc:
        raise v2_error(f"body is not valid {encoding}: {exc}") from None
    return b"".join(out)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, decompressed if sent with Content-Encoding (off the event loop, bounded
    by ``limit`` before and after); 413 past it, 415 for an unknown encoding."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", *DECOMPRESSORS):
        raise v2_error(
            f"unsupported Content-Encoding {encoding[:32]!r}", "unsupported_media_type", "body"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise v2_error(f"request body is larger than {limit} bytes", "body_too_large", "body")
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding in ("", "identity"):
        return body
    return await asyncio.to_thread(inflate, body, encoding, limit)


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


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "$inference_request: JSON, or JSON then binary tensor data (binary "
        "tensor data extension, with Inference-Header-Content-Length)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                        "parameters": {"type": "object"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY)
@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    ctx = context(request)
    loaded = await _lookup(request, name, version)
    check_room(loaded, 1)  # before reading the body: a refusal under a flood stays cheap
    body = await read_body(request, ctx.settings.max_body_bytes)
    header, tail = split_body(body, request.headers.get(HEADER_LENGTH))
    if loaded.manifest.takes_text:
        from .kserve_text import text_inputs

        inputs = text_inputs(ctx, loaded, header, tail)
    else:
        z, labels = parse_inputs(header, tail, loaded.manifest)
        plan = plan_image_tensors if loaded.manifest.translates else plan_tensors
        inputs = plan(ctx, loaded, z, labels)
    binary = wants_binary(header)
    timeout = timeout_from(header)
    until = deadline(ctx, None if timeout is None else min(timeout, ctx.settings.request_timeout_s))
    pinned = None if version is None else loaded.version
    loaded, images = await submit(ctx, name, pinned, loaded, inputs, until, waiter(request.receive))
    return encode_response(images, header, name, loaded.version, binary)
