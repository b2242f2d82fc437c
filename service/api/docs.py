"""/docs: Swagger UI served from this origin, under a CSP that allows no inline script and no CDN.

FastAPI's default page loads Swagger UI from a CDN and starts it with an inline ``<script>``,
which forces ``'unsafe-inline'`` and a third-party host into the page's script-src: markup
injected into the page, or a compromised CDN, would run as this origin, next to the API keys a
reader types into "Authorize". Here the bundle comes from a Python package (``fastapi-offline``,
which ships Swagger UI 5, the first major version that renders OpenAPI 3.1 as FastAPI emits it),
is served by this process under ``/docs/assets``, and the start-up code is a static file of ours.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
#: Swagger UI's bundle, stylesheet and favicon, as the package ships them.
ASSETS_DIRECTORY = Path(str(files("fastapi_offline") / "static"))

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{root}{assets}/swagger-ui.css">
<link rel="icon" href="{root}{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
<script src="{root}{assets}/swagger-ui-bundle.js"></script>
<script src="{root}/ui/static/docs.js"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """The /docs page and its assets; the app must be built with ``docs_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=ASSETS_DIRECTORY), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = escape(str(request.scope.get("root_path", "")))
        page = _PAGE.format(
            title=escape(app.title), root=root, assets=ASSETS, openapi=escape(app.openapi_url or "/openapi.json")
        )
        return HTMLResponse(page)
