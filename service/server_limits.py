"""The HTTP server's own limits, as uvicorn.Config keyword arguments.

Read timeouts for heads and bodies (a slowloris client, or a body shorter than its
Content-Length, is answered 408 and closed), a cap on open connections, a head-size limit, an
idle keep-alive timeout, and the file-descriptor limit raised to what the host allows, so idle
sockets cannot exhaust it. Refusals decided from a head alone are answered by the protocol
(service/admission.py).
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from fastapi import FastAPI

from .http_protocol import ConnectionLimits, guarded_protocol_class
from .settings import Settings

log = logging.getLogger("gan_serve")


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit (at least ``wanted``); -> the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=settings.max_connections,
        refusal_backoff_s=settings.refusal_backoff_ms / 1000.0,
    )


def uvicorn_limits(settings: Settings, app: FastAPI) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that enforce the settings' connection limits."""
    files = raise_open_file_limit(settings.max_connections + 256)
    if files < settings.max_connections + 64:
        log.warning(
            "open-file limit %d is close to max_connections %d", files, settings.max_connections
        )
    return {
        "http": guarded_protocol_class(
            connection_limits(settings), getattr(app.state, "admission", None)
        ),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "backlog": min(settings.max_connections, 4096),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
