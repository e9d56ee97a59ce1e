"""The API documentation pages, served entirely from this host.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, so it is blank on a machine without
internet. These routes serve the same page with the script, style and icon that the
``fastapi-offline`` package ships (kept up to date there, not copied here), and
``/openapi.json`` itself. ReDoc is left out: its bundle still fetches a logo from its CDN.
Being ordinary routes, these are counted under their own route label in the metrics.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from service.errors import ServiceError

router = APIRouter(include_in_schema=False)

ASSETS_DIR = Path(str(importlib.resources.files("fastapi_offline") / "static"))
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Only these files are served; a requested name is never joined onto a path.
ASSETS = {
    name: ASSETS_DIR / name for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
}
OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"


@router.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{OPENAPI_URL}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise ServiceError("not_found", f"no docs asset {name!r}", "name")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])
