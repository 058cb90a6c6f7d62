"""Enrolment, the page's side: "Add a host" (the host, its one-time code and the command
that installs and enrols the agent), a new code for a host (re-enrol), each host's
enrolment, report and restore time estimate, its RTO, and the all-hosts server report
(CSV or JSON). Signed-in accounts (CSRF for changes) and admin tokens (reads: `read`,
changes: `admin`), as for plans; never host tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...enrol.codes import IssuedCode
from ...enrol.installer import ADDRESS_RE, Pins, check_base_url, enrol_command
from ...enrol.reports import to_csv
from ...enrol.rto import parse_duration
from ...enrol.service import Enrolment
from ...errors import BadRequest
from ...plans.kinds import KINDS
from ...pools import run_in
from ..auth import require_change, require_overview
from ..jsonbody import read_json

log = logging.getLogger("rdr.page.enrol")
T = TypeVar("T")


class EnrolPageApi:
    def __init__(self, enrolment: Enrolment, pool: Executor, pins: Pins,
                 url: str = "") -> None:
        """`url`: how hosts reach the appliance (empty: the address the browser used)."""
        self.enrolment = enrolment
        self.pool = pool
        self.pins = pins
        self.url = check_base_url(url)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/hosts", self.add_host)
        r.add_post("/hosts/{host}/enrol-code", self.new_code)
        r.add_get("/hosts/{host}/enrolment", self.get_enrolment)
        r.add_put("/hosts/{host}/rto", self.put_rto)
        r.add_get("/hosts-report", self.hosts_report)

    def _issued(self, request: web.Request, issued: IssuedCode) -> web.Response:
        if self.url:
            url = self.url
        elif ADDRESS_RE.match(request.host or ""):
            url = f"https://{request.host}"
        else:
            raise BadRequest("bad_host_header", "the Host header is not an address")
        return web.json_response({
            "host": issued.host, "code": issued.code, "expires_at": issued.expires_at,
            "command": enrol_command(url, self.pins, issued.code),
            "pinned_public_key": self.pins.pubkey, "fingerprint": self.pins.fingerprint})

    async def add_host(self, request: web.Request) -> web.Response:
        who = require_change(request)
        body = await read_json(request, 4096, required=True, allowed={"name", "kind"})
        name, kind = body.get("name"), body.get("kind", "server")
        if not isinstance(name, str) or not name:
            raise BadRequest("bad_field", "field 'name' must be the host's name")
        if kind not in KINDS:
            raise BadRequest("bad_field", "field 'kind' must be 'server' or 'pc'")
        issued = await self.run(self.enrolment.add_host, name, kind)
        log.info("host %s (%s) added by %s (enrolment code issued)", name, kind, who)
        resp = self._issued(request, issued)
        resp.set_status(201)
        return resp

    async def new_code(self, request: web.Request) -> web.Response:
        who = require_change(request)
        host = request.match_info["host"]
        issued = await self.run(self.enrolment.new_code, host)
        log.info("new enrolment code for host %s issued by %s", host, who)
        return self._issued(request, issued)

    async def get_enrolment(self, request: web.Request) -> web.Response:
        require_overview(request)
        (entry,) = await self.run(self.enrolment.status, request.match_info["host"])
        return web.json_response(entry)

    async def put_rto(self, request: web.Request) -> web.Response:
        who = require_change(request)
        host = request.match_info["host"]
        body = await read_json(request, 4096, required=True, allowed={"rto"})
        rto = body.get("rto")
        if rto is not None and not isinstance(rto, str):
            raise BadRequest("bad_rto", "field 'rto' must be a duration like '4h' or null")
        seconds = parse_duration(rto) if rto is not None else None
        await self.run(self.enrolment.rto.set, host, seconds)
        log.info("RTO of host %s set to %s by %s", host, rto, who)
        (entry,) = await self.run(self.enrolment.status, host)
        return web.json_response(entry["rto"])

    async def hosts_report(self, request: web.Request) -> web.Response:
        require_overview(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("bad_format", "format must be json or csv")
        entries = await self.run(self.enrolment.status)
        if fmt == "csv":
            return web.Response(text=to_csv(entries), content_type="text/csv", headers={
                "Content-Disposition": 'attachment; filename="hosts-report.csv"'})
        return web.json_response({"hosts": entries})
