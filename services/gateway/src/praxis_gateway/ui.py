"""The dashboard: static files (``ui/``: one HTML page, one script, one style sheet; no build
step) served at ``/ui/``. They are public like the API docs; what they show comes from the API
with the bearer the operator signs in with. The page may load nothing but its own files and talk
to nothing but this origin (Content-Security-Policy), so text from the API can never run."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).with_name("ui")

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Dashboard(StaticFiles):
    def __init__(self) -> None:
        super().__init__(directory=UI_DIR, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response
