"""The LAN page itself: one HTML shell, its ES modules (app.js, which imports the others: one per
view and a few shared ones) and a style sheet, flat files shipped in the package.

No CDN, no build step: the appliance works offline on the customer's LAN. The shell holds no
data (everything comes from /api/v1 after sign-in), so it is served without authentication;
a strict Content-Security-Policy keeps any injected markup from running script.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@web.middleware
async def security_headers(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           ) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith("/api/"):
        resp.headers.setdefault("Cache-Control", "no-store")
    else:
        resp.headers.setdefault("Content-Security-Policy", CSP)
    return resp


def add_routes(router: web.UrlDispatcher) -> None:
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}

    async def index(request: web.Request) -> web.StreamResponse:
        return _file(files["index.html"])

    async def static(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])  # a fixed set: no path from the request
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    router.add_get("/", index)
    router.add_get("/static/{name}", static)


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix],
                                           "Cache-Control": "no-cache"})
