"""The operations routes at the root: ``/healthz`` (alive), ``/readyz`` (ready to take a
backup) and ``/metrics`` (Prometheus). What they report is computed elsewhere and passed in:
the readiness check, the metrics registry and the admin-token check are constructor
arguments, so these handlers know nothing of the store or the watchers."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import __version__
from ..errors import Unauthorized
from ..pools import run_in
from .auth import bearer_token


class Ops:
    def __init__(self, pool: Executor, readiness: Callable[[], dict[str, str]],
                 registry: CollectorRegistry,
                 metrics_token: Callable[[str], str | None] | None = None) -> None:
        """`readiness()` (in `pool`: it writes a probe file) returns what stands between the
        appliance and taking a backup, empty when ready; `metrics_token(token)` (in `pool`)
        the admin token's name or None -- when given, /metrics needs such a token."""
        self.pool = pool
        self.readiness = readiness
        self.registry = registry
        self.metrics_token = metrics_token

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the event loop answers."""
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: store mounted and writable, index open, not over the hard watermark, not
        degraded. 503 with the reasons otherwise."""
        problems = await run_in(self.pool, self.readiness)
        return web.json_response({"ready": not problems, "problems": problems},
                                 status=503 if problems else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        if self.metrics_token is not None:
            token = bearer_token(request)
            admin = await run_in(self.pool, self.metrics_token, token) if token else None
            if admin is None:
                raise Unauthorized("unauthorized", "/metrics needs an admin API token "
                                   "(rdr tokens add NAME)")
        body = await run_in(self.pool, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
