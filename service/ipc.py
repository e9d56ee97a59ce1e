"""Messages between HTTP front ends and the inference engine: one Unix socket per front end.

A frame is a 4-byte little-endian length and a pickle (protocol 5) of a tuple whose first item
names the message; numpy arrays travel as raw buffers inside it. Both ends are processes of
one service started by one parent, the socket lives in a directory only its user can enter,
so pickle is safe here and saves a format. Frames written during one event-loop turn leave in
one ``write`` (one system call for a whole batch of answers).

Why not shared memory or ZeroMQ: a request's latents are 400 bytes and a single image 1-12 KB,
so a copy through the kernel costs less than the bookkeeping of shared buffers; measured with
``python -m bench.ipc`` (docs/BENCHMARKS.md), a round trip costs about as much as a ZeroMQ
DEALER/ROUTER pair and needs no extra dependency. A 64-image bulk answer (768 KB for
64x64 RGB) is still one copy of well under a millisecond.

Front end -> engine::

    ("submit", rid, name, version, z, labels, deadline)   deadline: time.monotonic() or None
    ("withdraw", rid)                                     the client left
    ("reload", rid, name, version)  ("pin", rid, name, version)

Engine -> front end::

    ("state", state, load_errors, [ModelInfo...])          on connect and after every swap
    ("done", rid, images, queued)  ("fail", rid, error, message, retry_after, queued)
    ("reply", rid, ModelInfo | None, previous_version)  ("refused", rid, error, code, message)

``queued`` is the engine's queued images of that model after the event, so a front end can
refuse a request at once when the engine's queue is full (the engine checks again).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 30


class ModelInfo(NamedTuple):
    """What a front end needs to serve a model version the engine has loaded."""

    name: str
    version: int
    directory: str
    provider: str
    batch_sizes: tuple[int, ...]


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return LENGTH.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """Length-prefixed pickle frames over a stream; ``send`` coalesces writes per loop turn."""

    def __init__(
        self,
        on_message: Callable[[tuple[Any, ...]], None],
        on_lost: Callable[[], None] | None = None,
        on_made: Callable[[], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer, offset)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            end = offset + LENGTH.size + size
            if len(buffer) < end:
                break
            message = pickle.loads(buffer[offset + LENGTH.size : end])
            offset = end
            self.on_message(message)
        if offset:
            del buffer[:offset]

    def send(self, message: tuple[Any, ...]) -> None:
        if self.closed or self.transport is None:
            return
        self._outbox.append(frame(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()
