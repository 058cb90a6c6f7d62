"""Bearer-token authentication: every /api/v1 call names its principal by its token.

Host tokens (``rdr_...``) act for one host and see only its data; admin API tokens
(``rdra_...``, `rdr tokens add`) are for the provider's tools and see appliance-wide figures
but no host's files. Handlers state which kind they accept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError

#: The authenticated host of a request (None for an admin token).
HOST = web.RequestKey("host", str)
#: The admin token name of a request (None for a host token).
ADMIN = web.RequestKey("admin", str)

Principal = tuple[str, str]  # ("host" | "admin", name)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def auth_middleware(lookup: Callable[[str], Awaitable[Principal | None]]):
    """Middleware resolving the bearer token to a principal (401 otherwise)."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        token = bearer_token(request)
        who = await lookup(token) if token else None
        if who is None:
            raise ApiError(401, "unauthorized", "missing or invalid bearer token")
        kind, name = who
        request[HOST] = name if kind == "host" else None
        request[ADMIN] = name if kind == "admin" else None
        return await handler(request)

    return middleware


def require_host(request: web.Request) -> str:
    host = request[HOST]
    if host is None:
        raise ApiError(403, "forbidden", "this endpoint needs a host token")
    return host


def require_admin(request: web.Request) -> str:
    admin = request[ADMIN]
    if admin is None:
        raise ApiError(403, "forbidden", "this endpoint needs an admin API token")
    return admin
