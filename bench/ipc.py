"""What one front end <-> engine round trip costs: ``python -m bench.ipc [--requests N]``.

Sends ``submit``-shaped messages (one 1x100 float32 latent, as for mnist-cdcgan) to a child
process that answers each with a ``done`` message holding one 32x32x1 image, ``depth`` of them
outstanding at once, over

* ``unix``: the service's own :mod:`service.ipc` (pickle frames on a Unix socket, writes
  coalesced per event-loop turn), and
* ``zmq``: the same pickled messages over a ZeroMQ DEALER/ROUTER pair (asyncio on the client),
  the alternative LitServe uses.

Prints one JSON line per transport: round trips/s and CPU microseconds per round trip in each
process (``os.times`` of the client and the child), the cost the IPC adds to every request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pickle
import tempfile
import time
from typing import Any

import numpy as np

IMAGE = np.zeros((1, 32, 32, 1), np.uint8)
LATENT = np.zeros((1, 100), np.float32)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# --- Unix socket + service.ipc ------------------------------------------------------------


def _unix_server(path: str, ready, result) -> None:
    from service.ipc import FrameProtocol

    async def main() -> None:
        done = asyncio.Event()
        start = _cpu()

        def make() -> FrameProtocol:
            def on_message(message: tuple[Any, ...]) -> None:
                if message[0] == "stop":
                    done.set()
                    return
                protocol.send(("done", message[1], IMAGE, 0))

            protocol = FrameProtocol(on_message)
            return protocol

        server = await asyncio.get_running_loop().create_unix_server(make, path)
        ready.set()
        await done.wait()
        result.put(_cpu() - start)
        server.close()

    asyncio.run(main())


async def _unix_client(path: str, requests: int, depth: int) -> float:
    from service.ipc import FrameProtocol

    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future] = {}

    def on_message(message: tuple[Any, ...]) -> None:
        waiting.pop(message[1]).set_result(message[2])

    _, protocol = await loop.create_unix_connection(lambda: FrameProtocol(on_message), path)
    started = time.perf_counter()
    await _drive(requests, depth, waiting, protocol.send)
    elapsed = time.perf_counter() - started
    protocol.send(("stop",))
    await asyncio.sleep(0.05)
    return elapsed


# --- ZeroMQ DEALER/ROUTER -------------------------------------------------------------------


def _zmq_server(address: str, ready, result) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(address)
    ready.set()
    start = _cpu()
    while True:
        identity, body = sock.recv_multipart()
        message = pickle.loads(body)
        if message[0] == "stop":
            break
        sock.send_multipart([identity, pickle.dumps(("done", message[1], IMAGE, 0), 5)])
    result.put(_cpu() - start)


async def _zmq_client(address: str, requests: int, depth: int) -> float:
    import zmq
    import zmq.asyncio

    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.connect(address)
    waiting: dict[int, asyncio.Future] = {}

    async def receive() -> None:
        while True:
            message = pickle.loads(await sock.recv())
            waiting.pop(message[1]).set_result(message[2])

    reader = asyncio.get_running_loop().create_task(receive())
    started = time.perf_counter()
    await _drive(requests, depth, waiting, lambda m: sock.send(pickle.dumps(m, 5)))
    elapsed = time.perf_counter() - started
    await sock.send(pickle.dumps(("stop",), 5))
    reader.cancel()
    await asyncio.sleep(0.05)
    sock.close(linger=100)
    return elapsed


# --- common ---------------------------------------------------------------------------------


async def _drive(requests: int, depth: int, waiting: dict[int, asyncio.Future], send) -> None:
    """Keep ``depth`` requests outstanding until ``requests`` have come back."""
    loop = asyncio.get_running_loop()
    sent = 0

    async def one_lane() -> None:
        nonlocal sent
        while sent < requests:
            rid = sent = sent + 1
            future = waiting[rid] = loop.create_future()
            result = send(("submit", rid, "m", 1, LATENT, None, None))
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
            await future

    await asyncio.gather(*(one_lane() for _ in range(depth)))


def measure(transport: str, requests: int, depth: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ipc.sock")
        if transport == "unix":
            server, client = _unix_server, _unix_client
            address = path
        else:
            server, client = _zmq_server, _zmq_client
            address = f"ipc://{path}"
        child = ctx.Process(target=server, args=(address, ready, result))
        child.start()
        ready.wait(30)
        cpu_before = _cpu()
        elapsed = asyncio.run(client(address, requests, depth))
        client_cpu = _cpu() - cpu_before
        server_cpu = result.get(timeout=30)
        child.join(10)
    return {
        "transport": transport,
        "requests": requests,
        "depth": depth,
        "round_trips_per_s": round(requests / elapsed),
        "client_cpu_us_per_request": round(client_cpu / requests * 1e6, 1),
        "engine_cpu_us_per_request": round(server_cpu / requests * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ipc", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=64, help="requests outstanding at once")
    parser.add_argument("--transports", default="unix,zmq")
    args = parser.parse_args(argv)
    for transport in args.transports.split(","):
        print(json.dumps(measure(transport, args.requests, args.depth)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
