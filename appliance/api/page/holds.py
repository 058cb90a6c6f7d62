"""Detection's holds on the appliance page (and for admin API tokens): the suspicious
snapshots waiting for an admin's look, each with the clean snapshots prune keeps for it, and
lifting a hold. A host token may do neither: the hold exists because a host's data may be
in an attacker's hands, so only an admin account or an `admin`-scoped token lifts it (and
each lift is logged with who did it)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...detect.service import Detector
from ...errors import NotFound
from ...pools import run_in
from ...store.snapshots import is_snapshot_id
from ..auth import require_change, require_overview

T = TypeVar("T")


class HoldsApi:
    def __init__(self, detector: Detector, pool: Executor) -> None:
        self.detector = detector
        self.pool = pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/holds", self.list_holds)
        r.add_post("/hosts/{host}/snapshots/{snap}/lift-hold", self.lift)

    async def list_holds(self, request: web.Request) -> web.Response:
        require_overview(request)
        return web.json_response({"holds": await self.run(self.detector.holds)})

    async def lift(self, request: web.Request) -> web.Response:
        actor = require_change(request)
        host, snap = request.match_info["host"], request.match_info["snap"]
        if not is_snapshot_id(snap):
            raise NotFound("no_such_snapshot", f"no snapshot {snap!r}")
        row = await self.run(self.detector.lift, host, snap, actor)
        return web.json_response({"host": row.host, "snapshot": row.snapshot,
                                  "reviewed_by": row.reviewed_by,
                                  "reviewed_at": row.reviewed_at})
