"""uvicorn's HTTP protocol with each response's head and first body chunk sent in one write.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and
the body in a second write. A replica killed between those two writes leaves a proxy holding a
response head it has already passed on, which it can no longer retry on another replica: the
client sees a truncated answer. Joining the head to the first body chunk closes that window
(and saves a syscall and a TCP segment per response).
"""

from __future__ import annotations

import asyncio
from typing import Any

_HEAD_END = b"\r\n\r\n"
_INTERIM = b"HTTP/1.1 1"  # 1xx answers (100 Continue) must go out at once


class HeadCoalescingTransport:
    """Wraps a transport: holds a bare response head until the next write, then sends both."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if self._head is not None:
            data, self._head = self._head + data, None
        elif (
            data.startswith(b"HTTP/") and data.endswith(_HEAD_END) and not data.startswith(_INTERIM)
        ):
            # A head alone: the body write that follows carries it.
            self._head = data
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalescing(protocol_class: type) -> type:
    class CoalescingProtocol(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(HeadCoalescingTransport(transport))

    CoalescingProtocol.__name__ = f"HeadCoalescing{protocol_class.__name__}"
    return CoalescingProtocol


def http_protocol_class() -> type:
    """The protocol uvicorn would pick (httptools when installed, else h11), coalescing heads."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return _coalescing(HttpToolsProtocol)
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return _coalescing(H11Protocol)
