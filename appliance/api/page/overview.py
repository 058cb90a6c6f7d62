"""Appliance-wide figures for the page and admin API tokens (scope `read` or `admin`):
the overview (the page's first screen) and the billing usage report (admin tokens only).
Both are computed elsewhere and passed in; these routes only authorise and serve them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from ...errors import BadRequest, NotFound
from ...pools import run_in
from ..auth import require_admin, require_overview


class OverviewApi:
    def __init__(self, pool: Executor, overview: Callable[[], dict],
                 usage_report: Callable[[str | None], dict] | None = None) -> None:
        """`overview()` and `usage_report(month)` run in `pool` (they read the index);
        without `usage_report`, /usage is 404."""
        self.pool = pool
        self.overview_fn = overview
        self.usage_report = usage_report

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/overview", self.overview)
        r.add_get("/usage", self.usage)

    async def overview(self, request: web.Request) -> web.Response:
        require_overview(request)
        return web.json_response(await run_in(self.pool, self.overview_fn))

    async def usage(self, request: web.Request) -> web.Response:
        require_admin(request)
        month = request.query.get("month") or None
        if self.usage_report is None:
            raise NotFound("not_found", "usage reporting is not enabled")
        try:
            report = await run_in(self.pool, self.usage_report, month)
        except ValueError as exc:
            raise BadRequest("bad_field", f"month: {exc}") from None
        return web.json_response(report)
