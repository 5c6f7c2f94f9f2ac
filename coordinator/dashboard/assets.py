"""The dashboard's static files: ``GET /`` (the page) and ``GET /dashboard/{name}`` (its scripts and styles).

The files are read once from the package's ``static/`` folder, each served with a fixed content type (a module
script must be ``text/javascript``, whatever the host's MIME table says), an ETag, and the security headers
below. Neither path needs credentials: the page holds no data until the browser signs in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web

from shared.errors import RouteNotFound

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/dashboard/"
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}

# No inline script or style anywhere: everything comes from this origin's files; the page connects only back to
# this origin (fetch, the WebSocket, the log stream); it may not be framed, so no clickjacking.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (cheap, by ETag), so an upgraded coordinator serves its own page
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every shipped file by name, read once."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        found[path.name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return found


def public_paths() -> frozenset[str]:
    """The paths the auth middleware lets through without credentials."""
    return frozenset({"/", *(PREFIX + name for name in assets())})


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


async def index(request: web.Request) -> web.Response:
    return _serve(request, assets()["index.html"])


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = assets().get(name)
    if found is None:
        raise RouteNotFound(f"The dashboard has no file {name!r}", path=request.path)
    return _serve(request, found)
