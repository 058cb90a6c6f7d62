"""Bearer-token authentication of agents: every /api/v1 call names its host by its token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError

#: The authenticated host of a request.
HOST = web.RequestKey("host", str)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def host_auth_middleware(lookup: Callable[[str], Awaitable[str | None]]):
    """Middleware resolving the bearer token to a host name (401 otherwise)."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        token = bearer_token(request)
        host = await lookup(token) if token else None
        if host is None:
            raise ApiError(401, "unauthorized", "missing or invalid bearer token")
        request[HOST] = host
        return await handler(request)

    return middleware
