"""Offline API docs: Swagger UI served from the installed ``swagger_ui_bundle``.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN, which a hospital
LAN cannot reach. Here the page, its script, stylesheet and icon all come from
this service; the online spec validator is switched off so the page makes no
outside request either. Only those three asset files are served: the bundle's
own demo page and initializer point at an outside host and stay unreachable.
"""

from __future__ import annotations

import logging
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

logger = logging.getLogger(__name__)

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSETS_DIR = Path(swagger_ui_bundle.swagger_ui_path)
ASSET_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def add_offline_docs(app: FastAPI) -> None:
    """Add ``/docs`` and the three local assets it uses."""

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def asset(name: str) -> FileResponse:
        media_type = ASSET_FILES.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="Not Found")

        return FileResponse(ASSETS_DIR / name, media_type=media_type)

    app.add_api_route(DOCS_PATH, swagger_ui, include_in_schema=False)
    app.add_api_route(f"{ASSETS_PATH}/{{name}}", asset, include_in_schema=False)
