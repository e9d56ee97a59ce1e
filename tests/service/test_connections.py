"""The real server's connection limits: slow heads and bodies time out, heads are bounded,
open connections are capped, and a flood of refused requests leaves goodput standing."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.support.server import REPO_ROOT, ServiceProcess
from tests.support.tiny_model import write_tiny_model

LIMITS = {
    "GAN_SERVE_HEADER_TIMEOUT_S": "1",
    "GAN_SERVE_BODY_TIMEOUT_S": "1",
    "GAN_SERVE_MAX_CONNECTIONS": "20",
    "GAN_SERVE_MAX_HEADER_BYTES": "8192",
}


def _connect(service: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.settimeout(10)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_slow_heads_slow_bodies_large_heads_and_idle_sockets_are_cut(tmp_path) -> None:
    write_tiny_model(tmp_path, "tiny", 1)
    with ServiceProcess(tmp_path, env=LIMITS) as service:
        started = time.monotonic()
        idle = _connect(service)  # never sends a byte
        slowloris = _connect(service)
        slowloris.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        short_body = _connect(service)
        short_body.sendall(
            b"POST /v1/models/tiny/generate HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"seed": 1'
        )
        assert _answer(idle).startswith(b"HTTP/1.1 408 ")
        assert _answer(slowloris).startswith(b"HTTP/1.1 408 ")
        assert _answer(short_body).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 6

        big = _connect(service)
        big.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        assert _answer(big).startswith(b"HTTP/1.1 431 ")
        assert httpx.get(f"{service.url}/v1/models", timeout=5).status_code == 200
        big_v2 = _connect(service)
        big_v2.sendall(b"GET /v2/models/tiny HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        answer = _answer(big_v2)
        assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(
            b'{"error":"the request head is too large"}'
        )

        # A small head with a large body in one write: the body never counts as head.
        latents = ",".join(["[" + ",".join(["0.5"] * 8) + "]"] * 256)
        body = ('{"latents": [' + latents + '], "format": "npy"}').encode()
        assert len(body) > 8192
        one_write = _connect(service)
        one_write.sendall(
            b"POST /v1/models/tiny/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        assert _answer(one_write).startswith(b"HTTP/1.1 200 ")


@pytest.mark.slow
def test_open_connections_are_capped_and_freed(tmp_path) -> None:
    write_tiny_model(tmp_path, "tiny", 1)
    with ServiceProcess(tmp_path, env=LIMITS) as service:
        held = [_connect(service) for _ in range(20)]
        time.sleep(0.2)
        over = _connect(service)
        assert _answer(over).startswith(b"HTTP/1.1 503 ")
        for sock in held:  # the idle ones time out, and the server serves again
            _answer(sock)
            sock.close()
        assert httpx.get(f"{service.url}/v1/models", timeout=5).status_code == 200


@pytest.mark.slow
def test_goodput_holds_under_a_refusal_flood() -> None:
    """256 closed-loop clients resending n=64 at once (a naive retry loop) beside the capacity
    of 4 clients: refusals are answered from the request head, batches keep running."""
    from tests.support.flood import measure

    result = measure(seconds=3.0, store=REPO_ROOT / "model_store")
    flood = result["flood"]
    assert flood["errors"] - flood["error_kinds"]["status"] == 0, flood  # no broken connection
    assert result["refusals_per_s"] > 0, result  # the flood was refused, not queued
    assert result["goodput_ratio"] >= GOODPUT_FLOOR, result


# The target is 0.8 of capacity; measured 0.9 to 1.0 on an idle 2-core host (docs/SERVICE.md).
# The floor leaves room for a busy CI host.
GOODPUT_FLOOR = 0.7


@pytest.mark.slow
def test_after_a_refusal_the_connection_is_read_again_only_after_the_back_off() -> None:
    """A client resending at once on a keep-alive connection gets its next answer no sooner
    than the refusal back-off (100 ms): one refusal per back-off, not one per round trip."""
    store = REPO_ROOT / "model_store"
    args = ("--threads", "1", "--queue-limit", "64", "--max-batch-size", "64")
    with ServiceProcess(store, *args) as service:
        stop = threading.Event()

        def keep_the_queue_full() -> None:
            body = {"seed": 1, "n": 64, "format": "npy"}
            with httpx.Client(base_url=service.url, timeout=30) as client:
                while not stop.is_set():
                    client.post("/v1/models/mnist-cdcgan/generate", json=body)

        fillers = [threading.Thread(target=keep_the_queue_full) for _ in range(4)]
        for filler in fillers:
            filler.start()
        after_refusal: list[float] = []
        try:
            time.sleep(0.5)
            with _connect(service) as sock:
                refused = False
                for seed in range(40):
                    started = time.monotonic()
                    sock.sendall(
                        f"GET /v1/models/mnist-cdcgan/generate?seed={seed} HTTP/1.1\r\n"
                        "Host: x\r\n\r\n".encode()
                    )
                    head = _one_answer(sock)
                    if refused:
                        after_refusal.append(time.monotonic() - started)
                    refused = head.startswith(b"HTTP/1.1 503")
        finally:
            stop.set()
            for filler in fillers:
                filler.join()
    assert after_refusal, "the queue never filled: no refusal to back off from"
    # The rare refusal decided by the route (the queue filled between head and body) has no
    # back-off; those from the head, almost all of them, do.
    assert sorted(after_refusal)[len(after_refusal) // 2] >= 0.09, after_refusal


def _one_answer(sock: socket.socket) -> bytes:
    """One whole response (head and content-length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        body += chunk
    assert len(body) == length, "a pipelined answer arrived early"
    return head
