"""The lean path answers exactly as the documented FastAPI routes: both call the same
``answer_*`` functions, so every query and body, valid or not, gets the same answer."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import pytest

import service.fastpath as fastpath_module
from service.errors import ServiceError
from service.fastpath import query_pairs
from service.schemas import parse_png_query
from tests.service.conftest import metric_samples, run, running_app

GEN = "/v1/models/tiny/generate"

# Valid queries, some written unusually.
PLAIN = [
    "seed=7&label=3",
    "seed=7",
    "seed=0&label=9&n=4&columns=2",
    "seed=7&truncation=0.5",
    "seed=7&label=1&truncation=1",
    "seed=9223372036854775807",
    "seed=7&utm_source=x",
    "seed=007&label=%33",
    "seed=+7",
    "seed=1&truncation=1e-1",
    "seed=%207",
]
# Every validation error, answered with the field it names.
INVALID = [
    "seed=-1",
    "seed=abc",
    "seed=",
    "seed=9223372036854775808",
    "n=0",
    "seed=1&n=1000",
    "seed=1&columns=0",
    "seed=1&columns=300",
    "seed=1&truncation=2",
    "seed=1&truncation=nan",
    "seed=1&label=unknown",
    "seed=1&label=12",
    "seed=1&label=" + "x" * 65,
    "seed=7&seed=8",
    "seed=1&label=%C2%B2",
    "seed=1&label=%D9%A1",
    "seed=1&label=-%C2%B2",
    "seed=1&label=%E2%91%A0",
]


def test_query_parser_validates_through_the_query_model() -> None:
    q = parse_png_query(query_pairs(b"seed=7&label=3&n=2&truncation=0.25&columns=1&other=x"))
    assert (q.seed, q.label, q.n, q.truncation, q.columns) == (7, "3", 2, 0.25, 1)
    assert parse_png_query([]).seed is None
    for query, field in [("seed=7&seed=8", "seed"), ("n=0", "n"), ("truncation=nan", "truncation")]:
        with pytest.raises(ServiceError) as err:
            parse_png_query(query_pairs(query.encode()))
        assert err.value.status == 422 and err.value.field == field, query


@pytest.mark.parametrize("if_none_match", [None, "*"])
def test_fast_path_and_route_give_the_same_answers(store, monkeypatch, if_none_match) -> None:
    answered: list[str] = []  # every call of the lean path's GET answer
    inner = fastpath_module.answer_png

    async def spy(*args):  # noqa: ANN002, ANN202
        answered.append("lean")
        return await inner(*args)

    monkeypatch.setattr(fastpath_module, "answer_png", spy)

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            fast_app, fast = await stack.enter_async_context(running_app(store))
            slow_app, slow = await stack.enter_async_context(running_app(store, fast_path=False))
            headers = {"If-None-Match": if_none_match} if if_none_match else {}
            for query in PLAIN + INVALID + ["label=3", "n=3"]:
                answered.clear()
                a = await fast.get(f"{GEN}?{query}", headers=headers)
                b = await slow.get(f"{GEN}?{query}", headers=headers)
                assert answered == ["lean"], query  # the fast app only, and always
                assert a.status_code == b.status_code, query
                if "seed=" in query and a.status_code != 422:
                    assert list(a.headers.items()) == list(b.headers.items()), query
                    assert a.content == b.content, query
                else:  # a random seed: same shape of answer, different image
                    assert sorted(a.headers) == sorted(b.headers), query
                if query in PLAIN:
                    assert a.status_code == (304 if if_none_match else 200), query
                if query in INVALID:
                    assert a.status_code == 422, query
                    assert a.json() == b.json(), query

            # the ETag of a fast answer revalidates on both paths
            etag = (await fast.get(f"{GEN}?seed=5&label=2")).headers["etag"]
            assert (await slow.get(f"{GEN}?seed=5&label=2")).headers["etag"] == etag
            for client in (fast, slow):
                r = await client.get(f"{GEN}?seed=5&label=2", headers={"If-None-Match": etag})
                assert r.status_code == 304 and r.headers["etag"] == etag
            for client in (fast, slow):
                r = await client.get("/v1/models/nope/generate?seed=1")
                assert r.status_code == 404 and r.json()["error"]["field"] == "name"

            # the same requests, statuses and refusals counted under the same route label
            def counted(app) -> list:  # noqa: ANN001
                text = app.state.metrics.render().decode()
                return sorted(
                    (name, sorted(labels.items()), value)
                    for name, labels, value in metric_samples(text)
                    if name in ("gan_serve_requests_total", "gan_serve_refusals_total")
                    or name == "gan_serve_request_duration_seconds_count"
                )

            assert counted(fast_app) == counted(slow_app)
            assert any(
                dict(labels).get("route") == "/v1/models/{name}/generate"
                for name, labels, _ in counted(fast_app)
            )

    run(scenario())


def test_unexpected_error_on_the_fast_path_is_a_json_500(store, monkeypatch) -> None:
    import httpx

    import service.fastpath as fastpath

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("boom")

    async def scenario() -> None:
        async with running_app(store) as (app, _):
            monkeypatch.setattr(fastpath, "answer_png", broken)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.get(f"{GEN}?seed=1")
            assert r.status_code == 500
            assert r.json() == {
                "error": {"code": "internal", "message": "internal error", "field": None}
            }
            text = app.state.metrics.render().decode()
            assert any(
                name == "gan_serve_requests_total" and labels.get("status") == "500"
                for name, labels, _ in metric_samples(text)
            )

    run(scenario())


# POST bodies: answered by the lean path, or handed on to the route (with the body replayed).
POST_PLAIN = [
    {"seed": 1},
    {"seed": 1, "n": 3, "format": "npy"},
    {"seed": 1, "n": 2, "format": "png"},
    {"seeds": [1, 5], "format": "npy", "labels": [2, "3"]},
    {"seed": 2, "n": 4, "format": "grid", "columns": 2},
    {"seed": 2, "n": 2, "format": "json", "truncation": 0.5},
    {"latents": [[0.5] * 8], "labels": 4, "format": "npy"},
]
POST_INVALID = [
    b'{"seed": 1',
    b"[1, 2]",
    b'{"seed": -1}',
    b'{"seed": true}',
    b'{"seed": 1, "seeds": [1]}',
    b'{"n": 1000}',
    b'{"seed": 1, "labels": 99}',
    b'{"seed": 1, "colour": "red"}',
    b'{"latents": [[1.0]]}',
    b"[" * 5000 + b"]" * 5000,
]


def test_post_fast_path_and_route_give_the_same_answers(store, monkeypatch) -> None:
    answered: list[str] = []
    inner = fastpath_module.answer_generate

    async def spy(*args):  # noqa: ANN002, ANN202
        answered.append("lean")
        return await inner(*args)

    monkeypatch.setattr(fastpath_module, "answer_generate", spy)
    json_type = {"Content-Type": "application/json"}

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            fast_app, fast = await stack.enter_async_context(running_app(store))
            slow_app, slow = await stack.enter_async_context(running_app(store, fast_path=False))
            cases = [(json.dumps(b).encode(), json_type, 200) for b in POST_PLAIN]
            cases += [(b, json_type, None) for b in POST_INVALID]
            cases += [
                (b'{"seed": 3}', {"Content-Type": "text/plain"}, 415),
                (b'{"seed": 3}', {"Content-Type": "application/json; charset=utf-8"}, 200),
                (b"", {}, 200),
                ('{"seed": 3, "labels": "²"}'.encode(), json_type, 422),
            ]
            for content, headers, expected in cases:
                answered.clear()
                a = await fast.post(GEN, content=content, headers=headers)
                b = await slow.post(GEN, content=content, headers=headers)
                assert answered == ["lean"], content[:80]
                assert expected is None or a.status_code == expected, content[:80]
                assert a.status_code == b.status_code, content[:80]
                if a.status_code == 200 and b"seed" in content:
                    assert list(a.headers.items()) == list(b.headers.items()), content[:80]
                    assert a.content == b.content, content[:80]
                else:
                    assert sorted(a.headers) == sorted(b.headers), content[:80]
                if a.status_code >= 400:
                    assert a.json() == b.json(), content[:80]
                if content in POST_INVALID:
                    assert a.status_code in (400, 422), content[:80]

            def counted(app) -> list:  # noqa: ANN001
                text = app.state.metrics.render().decode()
                return sorted(
                    (name, sorted(labels.items()), value)
                    for name, labels, value in metric_samples(text)
                    if name in ("gan_serve_requests_total", "gan_serve_refusals_total")
                )

            assert counted(fast_app) == counted(slow_app)

    run(scenario())


def test_the_lean_routes_stay_documented_in_openapi(store) -> None:
    async def scenario() -> None:
        async with running_app(store) as (_, client):
            paths = (await client.get("/openapi.json")).json()["paths"]
            route = paths["/v1/models/{name}/generate"]
            query = {p["name"] for p in route["get"]["parameters"] if p["in"] == "query"}
            assert query == {"seed", "label", "n", "truncation", "columns"}
            assert "requestBody" in route["post"]
            assert "304" in route["get"]["responses"]

    run(scenario())
