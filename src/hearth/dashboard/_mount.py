"""Serve the dashboard's files under `/dashboard/`, with `/` sending a browser there.

The front end is static (ES modules and vendored libraries, no build step): everything
it knows comes from the API, with the key the user types, so the files hold no secret
and the same answer suits every caller. Each answer carries a Content-Security-Policy
that lets the page load only its own files and talk only to its own origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

DASHBOARD_PATH = "/dashboard"
STATIC_DIR = Path(__file__).with_name("static")
_READ = ("GET", "HEAD")
# The page's one inline script, the import map (browsers take no external ones); the
# policy allows it by its hash and no other inline script.
_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)


def mount(app: FastAPI) -> None:
    """Serve the dashboard on `app` at `DASHBOARD_PATH`, and at `/` a redirect to it
    unless `app` already answers there."""
    app.mount(DASHBOARD_PATH, DashboardFiles(STATIC_DIR), name="dashboard")
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.add_api_route("/", _to_dashboard, methods=["GET"], include_in_schema=False)


async def _to_dashboard() -> RedirectResponse:
    return RedirectResponse(f"{DASHBOARD_PATH}/", status_code=307)


class DashboardFiles(StaticFiles):
    """`StaticFiles` of `directory` (its `index.html` for the folder), each answer with
    the dashboard's security headers; an unknown file, or one outside `directory`, is
    Starlette's 404 (in E2B's error body, by the app's handlers)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=True)
        self.headers = security_headers((directory / "index.html").read_text())

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in _READ:
            # Starlette's own 405 does not say what is allowed.
            raise HTTPException(405, headers={"Allow": ", ".join(_READ)})
        response = await super().get_response(path, scope)
        response.headers.update(self.headers)
        return response


def security_headers(index_html: str) -> dict[str, str]:
    """The headers every dashboard answer carries, allowing `index_html`'s import map."""
    scripts = ["'self'"]
    for found in _IMPORT_MAP.finditer(index_html):
        digest = hashlib.sha256(found.group(1).encode()).digest()
        scripts.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    policy = {
        "default-src": "'self'",
        "script-src": " ".join(scripts),
        # uPlot and Preact set element styles from script; nothing else is inline.
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return {
        "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in policy.items()),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidate (by ETag) so a new version of Hearth's files is picked up at once.
        "Cache-Control": "no-cache",
    }
