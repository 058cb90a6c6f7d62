"""`GET /statements/{month}`: the month's statement for the provider's tools (admin API token,
through the tunnel) -- the stored bytes of a closed month, so every read gives the same
document. Built elsewhere (capacity's billing service) and passed in; this route only
authorises and serves."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from ...errors import BadRequest, NotFound
from ...pools import run_in
from ..auth import require_admin


class StatementsApi:
    def __init__(self, pool: Executor, statement: Callable[[str], bytes] | None) -> None:
        """`statement(month)` runs in `pool` (it reads the index); None: no contract is
        provisioned, and the route answers 404."""
        self.pool = pool
        self.statement = statement

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/statements/{month}", self.get)

    async def get(self, request: web.Request) -> web.Response:
        require_admin(request)
        if self.statement is None:
            raise NotFound("not_found", "no contract is provisioned: there are no statements")
        month = request.match_info["month"]
        try:
            body = await run_in(self.pool, self.statement, month)
        except ValueError as exc:
            raise BadRequest("bad_field", f"month: {exc}") from None
        return web.Response(body=body, content_type="application/json")
