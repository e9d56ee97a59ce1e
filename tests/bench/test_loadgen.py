"""The load generators: loopback only, bounded, and honest about failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from bench.loadgen import Workload, run_open_loop, run_wrk

OK_PATH = "/ok"


class TinyHttpServer:
    """An asyncio HTTP/1.1 server in a thread: 200 on /ok?..., 500 on anything else."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.requests = 0
        started = threading.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.requests += 1
                    path = head.split(b" ", 2)[1].decode()
                    status = b"200 OK" if path.startswith(OK_PATH) else b"500 Oops"
                    body = b"x" * 10
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n" + body)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        async def serve() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                try:
                    await server.serve_forever()
                except asyncio.CancelledError:
                    pass  # stop() cancels it

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),))
        self.thread.daemon = True
        self.thread.start()
        started.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[TinyHttpServer]:
    tiny = TinyHttpServer()
    try:
        yield tiny
    finally:
        tiny.stop()


def test_open_loop_sends_poisson_arrivals_and_counts_every_answer(server: TinyHttpServer) -> None:
    workload = Workload("single", 1, "GET", OK_PATH + "?seed={seed}&label={label}", "", 10)
    row = run_open_loop(server.url, workload, rate=200.0, seconds=1.0, max_requests=150)
    assert 100 <= row["requests"] <= 150  # Poisson at 200/s for 1 s, capped at 150
    assert row["ok"] == row["requests"] == server.requests
    assert row["errors"] == 0
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]


def test_open_loop_counts_non_2xx_as_errors(server: TinyHttpServer) -> None:
    workload = Workload("single", 1, "POST", "/broken", '{"seed": {seed}}', 0)
    row = run_open_loop(server.url, workload, rate=100.0, seconds=0.5)
    assert row["requests"] > 0
    assert row["ok"] == 0 and row["errors"] == row["requests"]
    assert row["p99_ms"] is None


def test_wrk_closed_loop_reports_counts_and_status_errors(server: TinyHttpServer) -> None:
    good = run_wrk(server.url, Workload("single", 1, "GET", OK_PATH + "?s={seed}"), 4, 1)
    assert good["ok"] > 0 and good["errors"] == 0 and good["concurrency"] == 4
    bad = run_wrk(server.url, Workload("single", 1, "GET", "/nope?s={seed}"), 2, 1)
    assert bad["ok"] == 0 and bad["error_kinds"]["status"] > 0


@pytest.mark.parametrize("url", ["http://10.0.0.1:80", "http://example.com:80", "http://127.0.0.1"])
def test_load_goes_only_to_loopback_with_a_port(url: str) -> None:
    workload = Workload("single", 1, "GET", "/")
    with pytest.raises(ValueError, match="loopback"):
        run_open_loop(url, workload, rate=1.0, seconds=0.1)
    with pytest.raises(ValueError, match="loopback"):
        run_wrk(url, workload, 1, 1)
