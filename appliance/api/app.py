"""The one aiohttp application: the operations routes and the page's files at the root, and
``/api/v1`` holding both front doors -- the agents' (api/ingest) and the restore page's
(api/page) -- behind one error mapping and one authentication. This module is the only one
that sees both doors; they never import each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web

from ..accounts import WebSession
from .auth import Principal, auth_middleware
from .errors import error_middleware
from .ops import Ops
from .page import ui

Middleware = Callable[..., Awaitable[web.StreamResponse]]


class Routes(Protocol):
    """A group of routes of one area (a front door is a few of these)."""

    def add_routes(self, r: web.UrlDispatcher) -> None: ...


def api_v1(*, ingest: Sequence[Routes], page: Sequence[Routes],
           tokens: Callable[[str], Awaitable[Principal | None]],
           sessions: Callable[[str], Awaitable[WebSession | None]] | None,
           max_json_bytes: int) -> web.Application:
    """``/api/v1``: every call authenticated by a bearer token (`tokens`) or a page session
    (`sessions`), the agents' routes first, then the page's."""
    app = web.Application(middlewares=[error_middleware, auth_middleware(tokens, sessions)],
                          client_max_size=max_json_bytes)
    for part in (*ingest, *page):
        part.add_routes(app.router)
    return app


def build_app(api: web.Application, ops: Ops,
              outer: Sequence[Middleware] = ()) -> web.Application:
    """The root application: `outer` middlewares (request timing) around the JSON errors
    and the page's security headers; the page shell and its files, the operations routes,
    and `api` (from `api_v1`) under ``/api/v1``."""
    app = web.Application(middlewares=[*outer, error_middleware, ui.security_headers])
    ui.add_routes(app.router)
    ops.add_routes(app.router)
    app.add_subapp("/api/v1", api)
    return app
