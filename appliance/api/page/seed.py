"""Rapid Protect / Rapid Recover disks on the page: the inserted removable disks and arming
one for an export or an import (signed-in accounts only)."""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from ...errors import BadRequest, NotFound
from ...pools import run_in
from ..auth import require_account
from ..jsonbody import read_json

log = logging.getLogger("rdr.page")


class SeedDisksApi:
    def __init__(self, pool: Executor, seeds: Any = None) -> None:
        """`seeds`: the daemon's SeedDisks (None where removable disks are not watched)."""
        self.pool = pool
        self.seeds = seeds

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/seed-disks", self.seed_disks)
        r.add_post("/seed-disks/{device}/arm", self.arm_seed_disk)

    def _need_seeds(self) -> Any:
        if self.seeds is None:
            raise NotFound("no_seed_disks", "removable disks are not watched here")
        return self.seeds

    async def seed_disks(self, request: web.Request) -> web.Response:
        require_account(request)
        return web.json_response(await run_in(self.pool, self._need_seeds().status))

    async def arm_seed_disk(self, request: web.Request) -> web.Response:
        account = require_account(request)
        seeds = self._need_seeds()
        body = await read_json(request, 64 * 1024)
        op, hosts = body.get("operation"), body.get("hosts") or None
        if op not in ("export", "import"):
            raise BadRequest("bad_field", "'operation' must be 'export' or 'import'")
        if hosts is not None and not (isinstance(hosts, list)
                                      and all(isinstance(h, str) for h in hosts)):
            raise BadRequest("bad_field", "'hosts' must be a list of host names")
        device = request.match_info["device"]
        disk = await seeds.arm(device, op, hosts)
        log.warning("account %r armed a seed %s on %s", account, op, device)
        return web.json_response({"disk": disk}, status=202)
