"""Request latency of every HTTP route, as a Prometheus histogram.

The provider sees from /metrics whether 5 pm's backups slow the API down (and the load test
reads its p50/p99 and the count of requests over 5 s from the same figures). Routes are
labelled by their pattern, never by the raw path: ids in paths would make one series per
session or chunk, and a scanner probing random paths would grow the registry without bound.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

#: Bucket bounds (seconds): fine below a second for p50/p99, and 5 s exactly, the slowest a
#: request may take under load.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RequestTimer:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "rdr_http_request_duration_seconds",
            "Time from a request's arrival to its last byte written, by route",
            ["route", "method", "status"], buckets=BUCKETS, registry=registry)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        t0 = time.monotonic()
        status = "aborted"  # the client went away (the handler was cancelled)
        try:
            resp = await handler(request)
            status = str(resp.status)
            return resp
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            info = request.match_info
            route = info.route.resource.canonical if info.route.resource is not None \
                and info.http_exception is None else "unmatched"
            self.histogram.labels(route, request.method, status).observe(
                time.monotonic() - t0)
