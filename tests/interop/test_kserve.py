"""Open Inference Protocol endpoints, driven by tritonclient (JSON and binary) and raw HTTP."""

from __future__ import annotations

import gzip
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ganclient.local import LocalGenerator
from service.manifest import latents_from_seeds

from .conftest import CLASSES, NZ, SIZE

H = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def tc(service):
    client = triton.InferenceServerClient(service.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(tiny_store):
    """Reference images for seeds 0..5 with labels 3,1,4,1,5,9, straight from onnxruntime."""
    z = latents_from_seeds(range(6), NZ)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.int64)
    return z, labels, LocalGenerator(tiny_store, "tiny").generate_latents(z, labels)


def test_health_server_and_model_metadata(tc, service):
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("tiny") and tc.is_model_ready("tiny", "1")
    assert not tc.is_model_ready("nope") and not tc.is_model_ready("tiny", "7")
    server = tc.get_server_metadata()
    assert server["name"] == "gan-serve" and "binary_tensor_data" in server["extensions"]
    meta = tc.get_model_metadata("tiny")
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "z", "datatype": "FP32", "shape": [-1, NZ]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]
    assert meta["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 1]}]
    assert meta["parameters"]["num_classes"] == CLASSES
    plain = tc.get_model_metadata("plain", "1")
    assert [t["name"] for t in plain["inputs"]] == ["z"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        tc.get_model_metadata("nope")


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
def test_tritonclient_round_trip(tc, expected, binary_in, binary_out):
    z, labels, images = expected
    inputs = [
        triton.InferInput("z", list(z.shape), "FP32"),
        triton.InferInput("label", [6], "INT64"),
    ]
    inputs[0].set_data_from_numpy(z, binary_data=binary_in)
    inputs[1].set_data_from_numpy(labels, binary_data=binary_in)
    outputs = [triton.InferRequestedOutput("image", binary_data=binary_out)]
    result = tc.infer("tiny", inputs, outputs=outputs, request_id="r-42")
    got = result.as_numpy("image")
    assert got.dtype == np.uint8 and got.shape == (6, SIZE, SIZE, 1)
    assert np.array_equal(got, images)
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "1"
    assert response["id"] == "r-42"
    assert ("parameters" in response["outputs"][0]) is binary_out


def images_generated(service, model: str) -> float:
    prefix = f'gan_serve_images_generated_total{{model="{model}"}}'
    rows = [
        r for r in httpx.get(f"{service.url}/metrics").text.splitlines() if r.startswith(prefix)
    ]
    return float(rows[0].split()[-1]) if rows else 0.0


def test_infer_goes_through_the_models_batcher(tc, service, expected):
    z, labels, _ = expected
    before = images_generated(service, "tiny")
    inputs = [triton.InferInput("z", [5, NZ], "FP32"), triton.InferInput("label", [5], "INT64")]
    inputs[0].set_data_from_numpy(z[:5])
    inputs[1].set_data_from_numpy(labels[:5])
    tc.infer("tiny", inputs)
    assert images_generated(service, "tiny") == before + 5


def test_tritonclient_default_outputs_are_binary_and_versioned_path(tc, expected):
    z, labels, images = expected
    inputs = [triton.InferInput("z", [2, NZ], "FP32"), triton.InferInput("label", [2], "INT64")]
    inputs[0].set_data_from_numpy(z[:2])
    inputs[1].set_data_from_numpy(labels[:2])
    result = tc.infer("tiny", inputs, model_version="1")  # no outputs -> binary_data_output
    assert np.array_equal(result.as_numpy("image"), images[:2])
    with pytest.raises(InferenceServerException, match="no version '2'"):
        tc.infer("tiny", inputs, model_version="2")


def test_nested_and_flat_json_data_agree(service, expected):
    z, labels, images = expected
    for data in (z.tolist(), z.reshape(-1).tolist()):
        body = {
            "inputs": [
                {"name": "z", "shape": [6, NZ], "datatype": "FP32", "data": data},
                {"name": "label", "shape": [6], "datatype": "INT64", "data": labels.tolist()},
            ]
        }
        r = httpx.post(f"{service.url}/v2/models/tiny/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [6, SIZE, SIZE, 1]
        assert np.array_equal(np.array(out["data"], np.uint8).reshape(out["shape"]), images)


def test_gzip_body_and_unconditional_model(service, tiny_store):
    z = latents_from_seeds([11, 12], NZ)
    body = {"inputs": [{"name": "z", "shape": [2, NZ], "datatype": "FP32", "data": z.tolist()}]}
    r = httpx.post(
        f"{service.url}/v2/models/plain/infer",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], np.uint8).reshape(2, SIZE, SIZE, 1)
    assert np.array_equal(got, LocalGenerator(tiny_store, "plain").generate_latents(z))


def _z(n=2, shape=None, data=None, datatype="FP32"):
    return {
        "name": "z",
        "shape": shape or [n, NZ],
        "datatype": datatype,
        "data": data if data is not None else [0.5] * (n * NZ),
    }


def _label(values=(1, 2), shape=None, datatype="INT64"):
    return {
        "name": "label",
        "shape": shape or [len(values)],
        "datatype": datatype,
        "data": list(values),
    }


BAD_JSON = [
    ({"inputs": []}, "inputs must be a non-empty array"),
    ({"inputs": [_z()]}, "missing input 'label'"),
    ({"inputs": [_z(), _label(), {**_label(), "name": "extra"}]}, "unknown input 'extra'"),
    ({"inputs": [_z(datatype="FP64"), _label()]}, "must have datatype FP32"),
    ({"inputs": [_z(), _label(datatype="INT32")]}, "must have datatype INT64"),
    ({"inputs": [_z(), _label(datatype="STRING")]}, "unknown datatype"),
    ({"inputs": [_z(shape=[2, NZ + 1], data=[0.1] * (2 * NZ + 2)), _label()]}, f"shape [n, {NZ}]"),
    ({"inputs": [_z(shape=[2, NZ], data=[0.1] * 3), _label()]}, "data has 3 elements"),
    ({"inputs": [_z(), _label((1, 2, 3))]}, "must have shape [2]"),
    ({"inputs": [_z(), _label((1, 10))]}, "must be 0..9"),
    ({"inputs": [_z(data=["x"] * (2 * NZ)), _label()]}, "only numbers"),
    ({"inputs": [_z(), _label((1.5, 2))]}, "only integers"),
    ({"inputs": [_z(65), _label(range(65))]}, "allowed 1..64"),
    ({"inputs": [_z(), _label()], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ({"inputs": [_z(), {**_label(), "shape": [-2]}]}, "non-negative integers"),
]


@pytest.mark.parametrize("body,message", BAD_JSON, ids=[m for _, m in BAD_JSON])
def test_bad_json_requests_are_4xx_with_error_string(service, body, message):
    r = httpx.post(f"{service.url}/v2/models/tiny/infer", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def _binary(z_bytes: bytes, declared: int, extra: bytes = b"", header_len: str | None = None):
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "z",
                    "shape": [1, NZ],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared},
                },
                {"name": "label", "shape": [1], "datatype": "INT64", "data": [0]},
            ]
        }
    ).encode()
    return head + z_bytes + extra, {H: header_len or str(len(head))}


def test_bad_binary_requests_and_unknown_model(service):
    url = f"{service.url}/v2/models/tiny/infer"
    good = np.zeros(NZ, np.float32).tobytes()
    cases = [
        (_binary(good, NZ * 4 - 4), 400, "needs 32"),
        (_binary(good[:-4], NZ * 4), 400, "binary data ends at byte"),
        (_binary(good, NZ * 4, extra=b"\0\0"), 400, "no input claims"),
        (_binary(good, NZ * 4, header_len="abc"), 400, "must be an integer"),
        (_binary(good, NZ * 4, header_len="99999"), 400, "but the body has"),
        ((b"{not json", {}), 400, "request JSON is invalid"),
        ((b"[]", {}), 400, "must be an object"),
        ((b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}), 400, "invalid"),
    ]
    for (content, headers), status, message in cases:
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == status, (message, r.text)
        assert message in r.json()["error"], r.text
    nan = np.full(NZ, np.nan, np.float32).tobytes()
    r = httpx.post(url, content=_binary(nan, NZ * 4)[0], headers=_binary(nan, NZ * 4)[1])
    assert r.status_code == 400 and "finite" in r.json()["error"]
    r = httpx.post(f"{service.url}/v2/models/nope/infer", json={"inputs": [_z()]})
    assert r.status_code == 404 and r.json() == {"error": "unknown model 'nope'"}
    ok_content, ok_headers = _binary(good, NZ * 4)
    r = httpx.post(url, content=ok_content, headers=ok_headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, SIZE, SIZE, 1]
    metrics = httpx.get(f"{service.url}/metrics").text
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith('gan_serve_refusals_total{model="tiny",reason="bad_request"}')
    )
    assert float(line.split()[-1]) >= len(cases) + 1
