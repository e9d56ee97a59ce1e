"""The transport wrapper that sends a response head together with its first body chunk."""

from __future__ import annotations

import socket

from service.http_protocol import HeadCoalescingTransport, http_protocol_class
from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


def test_head_waits_for_the_body_and_goes_out_with_it():
    raw = RecordingTransport()
    t = HeadCoalescingTransport(raw)
    t.write(HEAD)
    assert raw.writes == []
    t.write(b"hello")
    assert raw.writes == [HEAD + b"hello"]
    t.write(b"more")
    assert raw.writes[-1] == b"more"


def test_empty_body_still_releases_the_head():
    raw = RecordingTransport()
    t = HeadCoalescingTransport(raw)
    t.write(b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n")
    t.write(b"")
    assert raw.writes == [b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"]


def test_interim_and_complete_responses_are_not_held():
    raw = RecordingTransport()
    t = HeadCoalescingTransport(raw)
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    full = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"
    t.write(full)
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", full]


def test_close_flushes_a_held_head_and_other_attributes_pass_through():
    raw = RecordingTransport()
    t = HeadCoalescingTransport(raw)
    t.write(HEAD)
    t.close()
    assert raw.writes == [HEAD] and raw.closed
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)


def test_protocol_class_wraps_uvicorns_choice():
    cls = http_protocol_class()
    assert cls.__name__.startswith("HeadCoalescing")


def test_served_response_arrives_whole(tmp_path):
    """Over a real socket the service answers a keep-alive request and a pipelined second one."""
    write_tiny_model(tmp_path)
    with ServiceProcess(tmp_path) as svc:
        host, port = svc.url.removeprefix("http://").split(":")
        request = b"GET /v1/models/tiny/generate?seed=3&label=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request + request)
            data = b""
            while data.count(b"\x89PNG") < 2 or not data.endswith(b"IEND\xaeB`\x82"):
                chunk = sock.recv(65536)
                assert chunk, f"connection closed early after {len(data)} bytes"
                data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert data.count(b"HTTP/1.1 200") == 2
