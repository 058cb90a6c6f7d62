"""Scheduled backups on the appliance page (and for admin API tokens): each host's plan,
"back up now", pause and resume, the runs, and the premier check's list of files that were
not backed up. Mounted in ``/api/v1`` with the page's other routes; a signed-in account (with the
CSRF header for changes) or an admin API token may use it -- reads with scope `read`,
changes with scope `admin` only, since a plan's dump command runs on the host -- and a host
token may not (a host does not choose its own plan: the appliance does). Every changed
field is audited from its old to its new value (`plan_audit` in the plan's JSON).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...backup_schedule import BackupScheduler
from ...errors import BadRequest, NotFound
from ...plans.edit import edit_host
from ...plans.kinds import KINDS, HostKinds
from ...plans.repository import agent_status
from ...pools import run_in
from ...store.datastore import Datastore
from ..auth import require_change, require_overview
from ..jsonbody import read_json

log = logging.getLogger("rdr.page.backups")
T = TypeVar("T")

PLAN_FIELDS = {"paths", "excludes", "one_file_system", "bandwidth_kbps", "dump_command",
               "dump_name", "timezone", "source"}


class BackupsApi:
    def __init__(self, store: Datastore, pool: Executor, scheduler: BackupScheduler,
                 wake: Callable[[str], None], default_policy: str,
                 allow_custom_retention: bool = False) -> None:
        """`wake(host)` makes the host's waiting poll look at once (the agent job channel's wake);
        `default_policy` is the appliance's retention, shown beside a host's own."""
        self.store = store
        self.pool = pool
        self.scheduler = scheduler
        self.wake = wake
        self.default_policy = default_policy
        self.allow_custom_retention = allow_custom_retention  # contract options only (#24)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/hosts/{host}/plan", self.get_plan)
        r.add_put("/hosts/{host}/plan", self.put_plan)
        r.add_post("/hosts/{host}/backup-now", self.backup_now)
        r.add_post("/hosts/{host}/pause", self.pause)
        r.add_post("/hosts/{host}/resume", self.resume)
        r.add_get("/hosts/{host}/runs", self.runs)
        r.add_get("/hosts/{host}/not-backed-up", self.not_backed_up)

    def _plan_json(self, host: str) -> dict:
        rec = self.store.index.host_record(host)
        plan = self.scheduler.plans.get(host)
        win = self.scheduler.window_of(host)
        agent = self.scheduler.plans.agents().get(host)
        snaps = self.store.index.snapshots(host)
        return {"host": host, "plan": plan.to_json(), "window_start": win.start,
                "window_start_default": rec["window_start"] is None,
                "timezone": win.timezone, "timezone_default": self.scheduler.timezone,
                "policy": rec["policy"], "policy_default": self.default_policy,
                "kind": HostKinds(self.store.index).kind(host),
                "agent": agent,
                "agent_status": agent_status(agent, snaps[-1].received_at if snaps else None,
                                             time.time()),
                "plan_audit": self.scheduler.plans.audit(host)}

    async def get_plan(self, request: web.Request) -> web.Response:
        require_overview(request)
        return web.json_response(await self.run(self._plan_json, request.match_info["host"]))

    async def put_plan(self, request: web.Request) -> web.Response:
        """Checked whole before anything is written: a refusal is one 400 `bad_plan` whose
        `fields` name every wrong field with why, so the form shows them all at once. The
        answer's `changed` lists what this edit changed, from what to what (also audited)."""
        who = require_change(request)
        host = request.match_info["host"]
        body = await read_json(request, 256 * 1024, required=True,
                               allowed=PLAN_FIELDS | {"window_start", "policy", "kind"})
        kind = body.pop("kind", None)
        if kind is not None and kind not in KINDS:  # billing (issue 24)
            raise BadRequest("bad_field", "'kind' must be 'server' or 'pc'")
        window = body.pop("window_start", None)
        policy = body.pop("policy", None)

        def apply() -> dict:
            changes = edit_host(self.store, self.scheduler.plans, host, who, body, policy,
                                window, allow_custom_retention=self.allow_custom_retention)
            if kind is not None:
                HostKinds(self.store.index).set(host, kind)
            return {**self._plan_json(host), "changed": [
                {"field": f, "old": o, "new": n} for f, o, n in changes]}

        res = await self.run(apply)
        # Field names only: the values (a dump command may hold a password) are in the audit.
        log.info("%s changed the backup plan of %s: %s", who, host,
                 ", ".join(c["field"] for c in res["changed"]) or "nothing")
        return web.json_response(res)

    async def backup_now(self, request: web.Request) -> web.Response:
        who = require_change(request)
        host = request.match_info["host"]
        # an account's run reads "page:NAME" as before; a token's "token:NAME"
        by = who.replace("account:", "page:", 1)
        run = await self.run(self.scheduler.request_now, host, by)
        self.wake(host)
        log.info("%s asked for a backup of %s now (run %d)", who, host, run.id)
        return web.json_response({"run": run.to_json()}, status=201)

    async def pause(self, request: web.Request) -> web.Response:
        who = require_change(request)
        host = request.match_info["host"]
        res = await self.run(self.scheduler.pause, host)
        log.info("%s paused the backups of %s", who, host)
        return web.json_response(res)

    async def resume(self, request: web.Request) -> web.Response:
        who = require_change(request)
        host = request.match_info["host"]
        res = await self.run(self.scheduler.resume, host)
        self.wake(host)
        log.info("%s resumed the backups of %s", who, host)
        return web.json_response(res)

    async def runs(self, request: web.Request) -> web.Response:
        require_overview(request)
        host = request.match_info["host"]
        raw = request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise BadRequest("bad_field", "'limit' must be an integer from 1 to 500")

        def read() -> list[dict]:
            if not self.store.index.host_exists(host):
                raise NotFound("no_such_host", f"no host named {host!r}")
            return [r.to_json() for r in self.scheduler.runs.list(host, int(raw))]

        runs = await self.run(read)
        return web.json_response({"host": host, "runs": runs})

    async def not_backed_up(self, request: web.Request) -> web.Response:
        require_overview(request)
        host = request.match_info["host"]

        def read() -> dict:
            self.scheduler.plans.get(host)  # 404 for an unknown host
            return self.scheduler.runs.gaps(host)

        return web.json_response(await self.run(read))
