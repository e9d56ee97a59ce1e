"""uvicorn's HTTP protocol with each response's head and first body chunk sent in one write,
and the per-connection limits uvicorn lacks (read timeouts, head size, connection cap).

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and
the body in a second write. A replica killed between those two writes leaves a proxy holding a
response head it has already passed on, which it can no longer retry on another replica: the
client sees a truncated answer. Joining the head to the first body chunk closes that window
(and saves a syscall and a TCP segment per response).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    import httptools
except ImportError:  # uvicorn then uses h11
    httptools = None

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


# --- connection limits ---------------------------------------------------------------------

Admission = Callable[[str, str], "bytes | None"]
"""``(method, path) -> None`` to serve the request, or a whole HTTP response that answers it
from its head alone (overload, drain), before any ASGI task is made for it."""


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits uvicorn's httptools protocol does not enforce itself."""

    header_timeout_s: float = 10.0  # from connection (or request start) to a complete head
    body_timeout_s: float = 30.0  # from a complete head to a complete body
    max_header_bytes: int = 16 * 1024  # request line and headers
    max_connections: int = 2048  # open connections; more are answered 503 and closed
    # After a refusal answered from the head, the connection's next request is read this much
    # later: a client resending at once on the same connection (a naive retry loop) costs a
    # refusal per back-off, not one per round trip, so a flood cannot starve admitted work.
    refusal_backoff_s: float = 0.1


def canned_response(status: int, reason: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 response as bytes (for answers written by the protocol itself)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _error_json(code: str, message: str) -> bytes:
    return (
        b'{"error":{"code":"' + code.encode() + b'","message":"' + message.encode() + b'",'
        b'"field":null}}'
    )


TIMEOUT_408 = canned_response(
    408,
    "Request Timeout",
    _error_json("request_timeout", "the request did not arrive in time"),
    {"content-type": "application/json", "connection": "close"},
)
HEADER_431 = canned_response(
    431,
    "Request Header Fields Too Large",
    _error_json("header_too_large", "the request head is too large"),
    {"content-type": "application/json", "connection": "close"},
)
HEADER_431_V2 = canned_response(  # the Open Inference Protocol's error shape, for /v2 paths
    431,
    "Request Header Fields Too Large",
    b'{"error":"the request head is too large"}',
    {"content-type": "application/json", "connection": "close"},
)
BUSY_503 = canned_response(
    503,
    "Service Unavailable",
    _error_json("overloaded", "too many open connections; retry later"),
    {"content-type": "application/json", "connection": "close", "retry-after": "1"},
)


def _guarded(protocol_class: type, limits: ConnectionLimits, admission: Admission | None) -> type:
    """httptools protocol with read timeouts, a head-size limit, a connection cap and, with
    ``admission``, refusals answered from the request head."""

    class GuardedProtocol(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._timer: asyncio.TimerHandle | None = None
            self._in_head = True
            self._head_bytes = 0
            self._heads_completed = 0
            self._refused = False
            self._backing_off: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self.transport.write(BUSY_503)
                self.transport.close()
                return
            self._arm(limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._backing_off is not None:
                self._backing_off.cancel()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _timed_out(self) -> None:
            """A head or body that stopped arriving: answer 408 if nothing was sent yet."""
            self._timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(TIMEOUT_408)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            in_head, heads_before = self._in_head, self._heads_completed
            super().data_received(data)
            # A chunk in which a head completed also carries body bytes (and perhaps a whole
            # request): none of it counts against the next head's limit.
            still_in_same_head = self._heads_completed == heads_before
            if in_head and self._in_head and still_in_same_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    self._disarm()
                    v2 = getattr(self, "url", b"").startswith(b"/v2")
                    self.transport.write(HEADER_431_V2 if v2 else HEADER_431)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._timer is None:
                self._arm(limits.header_timeout_s)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._heads_completed += 1
            if self._has_body():
                self._arm(limits.body_timeout_s)
            else:
                self._disarm()
            if admission is not None and self._idle() and self._admit() is False:
                return
            super().on_headers_complete()

        def _has_body(self) -> bool:
            for name, value in self.headers:
                if name == b"content-length":
                    return value.strip() not in (b"0", b"")
                if name == b"transfer-encoding":
                    return True
            return False

        def _idle(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

        def _admit(self) -> bool:
            """Ask ``admission``; False when it answered the request itself."""
            path = httptools.parse_url(self.url).path.decode("ascii", "replace")
            answer = admission(self.parser.get_method().decode("ascii", "replace"), path)
            if answer is None:
                return True
            self._refused = True
            self.transport.write(answer)
            if not self.parser.should_keep_alive() or b"connection: close" in answer:
                self._disarm()
                self.transport.close()
            return False

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_head = True
            if self._refused:  # the body of a refused request, read and dropped
                self._refused = False
                self._disarm()
                self.on_response_complete()
                self._back_off()
                return
            self._disarm()
            super().on_message_complete()

        def _back_off(self) -> None:
            """Read this connection's next request only after ``refusal_backoff_s``."""
            if limits.refusal_backoff_s <= 0 or self.transport.is_closing():
                return
            self.transport.pause_reading()
            self._backing_off = self.loop.call_later(limits.refusal_backoff_s, self._resume)

        def _resume(self) -> None:
            self._backing_off = None
            if not self.transport.is_closing() and not self.flow.read_paused:
                self.transport.resume_reading()

    GuardedProtocol.__name__ = f"Guarded{protocol_class.__name__}"
    return GuardedProtocol


def guarded_protocol_class(limits: ConnectionLimits, admission: Admission | None = None) -> type:
    """:func:`http_protocol_class` with ``limits`` enforced (httptools; h11 enforces its own
    head limit and gets only the coalescing)."""
    if httptools is None:
        return http_protocol_class()
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return _guarded(_coalescing(HttpToolsProtocol), limits, admission)
