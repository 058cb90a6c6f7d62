"""`GET /reports/{month}`: the page's Reports view for the customer's accounts and `read`
API tokens -- the month's statement and the daily series its charts are drawn from (SLA 1.4:
daily reporting via the portal). Computed elsewhere (capacity) and passed in."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from ...errors import BadRequest
from ...pools import run_in
from ..auth import require_overview


class ReportsApi:
    def __init__(self, pool: Executor, report: Callable[[str], dict]) -> None:
        """`report(month)` runs in `pool` (it reads the index)."""
        self.pool = pool
        self.report = report

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/reports/{month}", self.get)

    async def get(self, request: web.Request) -> web.Response:
        require_overview(request)
        try:
            body = await run_in(self.pool, self.report, request.match_info["month"])
        except ValueError as exc:
            raise BadRequest("bad_field", f"month: {exc}") from None
        return web.json_response(body)
