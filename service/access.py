"""Who may use the privileged routes (reload, loading a version that is not resident).

Secure by default:

* with an admin token configured (``GAN_SERVE_ADMIN_TOKEN`` or ``admin_token_file``; never a
  command-line flag, which ``ps`` shows), a request needs ``Authorization: Bearer <token>``,
  compared in constant time;
* without one, only loopback clients are served, and only when the ``Host`` header names
  loopback (or a host in ``allowed_hosts``) and any ``Origin`` is that same host: a web page
  cannot drive them through the user's browser (CSRF), nor through a DNS name that resolves
  to 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import hmac
from ipaddress import ip_address
from urllib.parse import urlsplit

from starlette.requests import Request

from .errors import ServiceError
from .settings import Settings

LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))


def _loopback_address(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str:
    """``example.org:8000`` / ``[::1]:8000`` -> ``example.org`` / ``::1``."""
    return (urlsplit("//" + value).hostname or "").lower()


def check_admin(request: Request, settings: Settings) -> None:
    """Return if ``request`` may use an admin route, else raise 401 or 403 saying why."""
    token = settings.resolved_admin_token()
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ServiceError("unauthorized", "this route needs the admin token", "authorization")
        return
    client = request.client.host if request.client else None
    if not _loopback_address(client):
        raise ServiceError(
            "forbidden",
            "admin routes answer loopback clients only while no admin token is configured",
        )
    allowed = LOOPBACK_NAMES | {h.lower() for h in settings.allowed_hosts}
    host = _hostname(request.headers.get("host", ""))
    if host not in allowed:
        raise ServiceError("forbidden", "the Host header does not name this server", "host")
    origin = request.headers.get("origin")
    if origin is not None and _hostname(urlsplit(origin).netloc) != host:
        raise ServiceError("forbidden", "cross-origin requests may not use admin routes", "origin")


def may_load(request: Request, settings: Settings) -> bool:
    """Whether ``request`` may make the service load a version that is not resident."""
    try:
        check_admin(request, settings)
    except ServiceError:
        return False
    return True
