"""Notifications on the page: what was sent, to whom, when, and what failed; "send a test"
(signed-in accounts and admin tokens; a test needs an account or an `admin`-scoped token).
Targets are shown by name and kind only."""

from __future__ import annotations

import logging
from concurrent.futures import Executor

from aiohttp import web

from ...errors import BadRequest
from ...notify.service import Notifications
from ...pools import run_in
from ..auth import require_change, require_overview
from ..jsonbody import read_json
from ..params import whole_number

log = logging.getLogger("rdr.page")


class NotifyApi:
    def __init__(self, pool: Executor, notifications: Notifications) -> None:
        self.pool = pool
        self.notifications = notifications

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/notify", self.view)
        r.add_post("/notify/test", self.test)

    async def view(self, request: web.Request) -> web.Response:
        require_overview(request)
        raw = request.query.get("limit", "50")
        limit = whole_number(raw)
        if limit is None or not 1 <= limit <= 500:
            raise BadRequest("bad_param", "'limit' must be a whole number from 1 to 500")
        return web.json_response(await run_in(self.pool, self.notifications.view, limit))

    async def test(self, request: web.Request) -> web.Response:
        who = require_change(request)
        body = await read_json(request, 4096)
        target = body.get("target")
        if target is not None and not isinstance(target, str):
            raise BadRequest("bad_field", "'target' must be a target's name")
        log.info("%s sends a test notification to %s", who, target or "every target")
        results = await self.notifications.send_test(target, who)
        return web.json_response({"messages": results})
