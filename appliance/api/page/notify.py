"""Notifications on the page: what was sent, to whom, when, and what failed; the targets
(the TOML's, listed; the page's, added, changed and removed here); "send a test".

Reading is for signed-in accounts and admin tokens; a change or a test needs an account or an
`admin`-scoped token (and, with a session cookie, the CSRF header, like every change on the
page). Secrets (the SMTP password, the webhook's HMAC key) are write-only: no answer carries
one, and the log names the target and the fields changed, never a value. Tests are
rate-limited per principal (the sign-in throttle's budget: `TEST_FREE` within
`TEST_WINDOW` seconds, then a doubling wait; 429 with Retry-After): each test is a real
message through a real server.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor

from aiohttp import web

from ...errors import BadRequest, NotFound, TooManyRequests
from ...notify.service import Notifications
from ...notify.targets import TargetBook
from ...pools import run_in
from ..auth import require_change, require_overview
from ..jsonbody import read_json
from ..params import whole_number
from ..throttle import SignInThrottle

log = logging.getLogger("rdr.page")

TEST_FREE = 5
TEST_WINDOW = 300.0


class NotifyApi:
    def __init__(self, pool: Executor, notifications: Notifications,
                 test_throttle: SignInThrottle | None = None) -> None:
        self.pool = pool
        self.notifications = notifications
        self.test_throttle = test_throttle or SignInThrottle(
            free=TEST_FREE, window=TEST_WINDOW, base=30.0, cap=900.0)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/notify", self.view)
        r.add_post("/notify/test", self.test)
        r.add_post("/notify/targets", self.add_target)
        r.add_put("/notify/targets/{name}", self.change_target)
        r.add_delete("/notify/targets/{name}", self.remove_target)

    async def view(self, request: web.Request) -> web.Response:
        require_overview(request)
        raw = request.query.get("limit", "50")
        limit = whole_number(raw)
        if limit is None or not 1 <= limit <= 500:
            raise BadRequest("bad_param", "'limit' must be a whole number from 1 to 500")
        return web.json_response(await run_in(self.pool, self.notifications.view, limit))

    async def test(self, request: web.Request) -> web.Response:
        who = require_change(request)
        keys = (f"notify-test:{who}",)
        wait = self.test_throttle.admit(keys)
        if wait > 0:
            secs = max(1, int(wait + 0.999))
            raise TooManyRequests("throttled", f"too many test messages; try again in "
                                  f"{secs} s", retry_after=secs)
        try:
            body = await read_json(request, 4096)
            target = body.get("target")
            if target is not None and not isinstance(target, str):
                raise BadRequest("bad_field", "'target' must be a target's name")
            log.info("%s sends a test notification to %s", who, target or "every target")
            results = await self.notifications.send_test(target, who)
        finally:
            # every test counts, sent or not: the budget bounds messages and attempts alike
            self.test_throttle.finish(keys, ok=False)
        return web.json_response({"messages": results})

    # --- the page's targets -----------------------------------------------------------------
    def _book(self) -> TargetBook:
        if self.notifications.book is None:
            raise NotFound("no_target_book", "targets cannot be changed on this appliance")
        return self.notifications.book

    async def add_target(self, request: web.Request) -> web.Response:
        who = require_change(request)
        body = await read_json(request, 64 * 1024, required=True)
        book = self._book()
        target = await run_in(self.pool, book.add, body, who)
        log.info("%s added the %s notification target %s", who, target["kind"],
                 target["name"])
        self.notifications.wake.set()
        return web.json_response({"target": target}, status=201)

    async def change_target(self, request: web.Request) -> web.Response:
        who = require_change(request)
        name = request.match_info["name"]
        body = await read_json(request, 64 * 1024, required=True)
        book = self._book()
        target = await run_in(self.pool, book.change, name, body, who)
        # field names only, never a value (a password is one of them)
        log.info("%s changed the notification target %s: %s", who, name,
                 ", ".join(sorted(k for k in body if k not in ("kind", "name"))) or "nothing")
        self.notifications.wake.set()
        return web.json_response({"target": target})

    async def remove_target(self, request: web.Request) -> web.Response:
        who = require_change(request)
        name = request.match_info["name"]
        book = self._book()
        await run_in(self.pool, book.remove, name, who)
        log.info("%s removed the notification target %s", who, name)
        return web.json_response({"removed": name})
