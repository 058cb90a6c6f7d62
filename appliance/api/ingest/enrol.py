"""Enrolment, the hosts' side: the installer and wheelhouse (public), the code exchange
(public), and the host report an enrolled agent sends (its host token).

The public routes (``public.enrol.*``) are rate-limited per client address: the exchange by
the sign-in throttle (each failed code counts, a run of them locks the address out, 429 with
Retry-After), the downloads by a request budget per address. Nothing here logs a code or a
token: the log names the host and the address only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...enrol.installer import ADDRESS_RE, Pins, Wheelhouse, check_base_url, render_install_script
from ...enrol.service import Enrolment
from ...errors import BadRequest, TooManyRequests
from ...pools import run_in
from ..auth import require_host
from ..jsonbody import read_json
from ..throttle import SignInThrottle

log = logging.getLogger("rdr.enrol")
T = TypeVar("T")


class RequestBudget:
    """At most `limit` requests per `window` seconds per key (downloads: a full install is
    about twenty files, so a host never meets it; a scraper does)."""

    def __init__(self, limit: int = 300, window: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.limit, self.window, self.clock, self.max_keys = limit, window, clock, max_keys
        self._seen: dict[str, tuple[float, int]] = {}

    def take(self, key: str) -> float:
        """0.0 when admitted, else the seconds until the key's window ends."""
        now = self.clock()
        start, count = self._seen.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return start + self.window - now
        if len(self._seen) >= self.max_keys and key not in self._seen:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        self._seen[key] = (start, count + 1)
        return 0.0


def _too_many(wait: float, what: str) -> TooManyRequests:
    secs = max(1, int(wait + 0.999))
    return TooManyRequests("throttled", f"too many {what} from this address; try again in "
                           f"{secs} s", retry_after=secs)


class EnrolApi:
    def __init__(self, enrolment: Enrolment, pool: Executor, wheelhouse: Wheelhouse,
                 pins: Pins, serial: str, url: str = "",
                 throttle: SignInThrottle | None = None,
                 downloads: RequestBudget | None = None) -> None:
        """`url`: how hosts reach the appliance (empty: the address the request used)."""
        self.enrolment = enrolment
        self.pool = pool
        self.wheelhouse = wheelhouse
        self.pins = pins
        self.serial = serial
        self.url = check_base_url(url)
        self.throttle = throttle or SignInThrottle(free=10, window=900.0, base=30.0)
        self.downloads = downloads or RequestBudget()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/enrol/install.sh", self.install_sh, name="public.enrol.install")
        r.add_get("/enrol/version", self.version, name="public.enrol.version")
        r.add_get("/enrol/targets/{target}", self.target, name="public.enrol.target")
        r.add_get("/enrol/files/{name}", self.file, name="public.enrol.file")
        r.add_post("/enrol/exchange", self.exchange, name="public.enrol.exchange")
        r.add_put("/agent/report", self.put_report)

    def _admit_download(self, request: web.Request) -> None:
        wait = self.downloads.take("addr:" + (request.remote or "?"))
        if wait > 0:
            raise _too_many(wait, "downloads")

    def base_url(self, request: web.Request) -> str:
        """The appliance as this host reached it (written into the installer)."""
        if self.url:
            return self.url
        if not ADDRESS_RE.match(request.host or ""):
            raise BadRequest("bad_host_header", "the Host header is not an address")
        return f"https://{request.host}"

    async def install_sh(self, request: web.Request) -> web.Response:
        self._admit_download(request)
        version = await self.run(self.wheelhouse.version)
        script = render_install_script(self.base_url(request), self.pins, version, self.serial)
        return web.Response(text=script, content_type="text/x-shellscript")

    async def version(self, request: web.Request) -> web.Response:
        """The agent version this appliance offers (agents compare theirs for upgrades)."""
        self._admit_download(request)
        version = await self.run(self.wheelhouse.version)
        return web.json_response({"version": version,
                                  "targets": await self.run(self.wheelhouse.targets)})

    async def target(self, request: web.Request) -> web.Response:
        self._admit_download(request)
        text = await self.run(self.wheelhouse.target, request.match_info["target"])
        return web.Response(text=text, content_type="text/plain")

    async def file(self, request: web.Request) -> web.StreamResponse:
        self._admit_download(request)
        path = await self.run(self.wheelhouse.file, request.match_info["name"])
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def exchange(self, request: web.Request) -> web.Response:
        """A one-time code for the host's token (rotated: re-enrolling replaces the old)."""
        keys = ("addr:" + (request.remote or "?"),)
        wait = self.throttle.admit(keys)
        if wait > 0:
            raise _too_many(wait, "enrolment attempts")
        ok = False
        try:
            body = await read_json(request, 512 * 1024, required=True,
                                   allowed={"code", "report"})
            code = body.get("code")
            if not isinstance(code, str) or not code:
                raise BadRequest("bad_field", "field 'code' must be the enrolment code")
            host, token = await self.run(self.enrolment.exchange, code, body.get("report"))
            ok = True
        finally:
            self.throttle.finish(keys, ok)
        log.info("host %s enrolled from %s (its token rotated)", host, request.remote)
        return web.json_response({"host": host, "token": token,
                                  "fingerprint": self.pins.fingerprint})

    async def put_report(self, request: web.Request) -> web.Response:
        host = require_host(request)
        body = await read_json(request, 512 * 1024, required=True)
        await self.run(self.enrolment.reports.put, host, body)
        return web.Response(status=204)
