"""/healthz, /readyz and /metrics (api/ops.py) serve what they are given: the readiness
check's problems, the registry's metrics, and the token check when one is required."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, Counter

from appliance import __version__
from appliance.api.app import build_app
from appliance.api.errors import error_middleware
from appliance.api.ops import Ops

from ..http_routes import api_routes


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("rdr_test_things", "things", registry=reg).inc(3)
    return reg


async def call(handler, headers: dict | None = None) -> web.Response:
    resp = await error_middleware(make_mocked_request("GET", "/x", headers=headers or {}),
                                  handler)
    assert isinstance(resp, web.Response)
    return resp


async def test_healthz_and_readyz(registry) -> None:
    problems: dict[str, str] = {}
    with ThreadPoolExecutor(1) as pool:
        ops = Ops(pool, lambda: dict(problems), registry)
        health = await call(ops.healthz)
        assert json.loads(health.text) == {"status": "ok", "version": __version__}
        ready = await call(ops.readyz)
        assert ready.status == 200 and json.loads(ready.text) == {"ready": True, "problems": {}}
        problems["store"] = "data directory not writable"
        ready = await call(ops.readyz)
        assert ready.status == 503
        assert json.loads(ready.text) == {"ready": False, "problems": problems}


async def test_metrics_open_or_behind_an_admin_token(registry) -> None:
    with ThreadPoolExecutor(1) as pool:
        open_ops = Ops(pool, dict, registry)
        resp = await call(open_ops.metrics)
        assert resp.status == 200 and b"rdr_test_things_total 3.0" in resp.body
        guarded = Ops(pool, dict, registry, {"rdra_good": "prom"}.get)
        for headers in ({}, {"Authorization": "Bearer rdra_bad"}):
            resp = await call(guarded.metrics, headers)
            assert resp.status == 401 and json.loads(resp.text)["error"] == "unauthorized"
        resp = await call(guarded.metrics, {"Authorization": "Bearer rdra_good"})
        assert resp.status == 200 and b"rdr_test_things_total" in resp.body


def test_the_app_holds_the_page_files_the_ops_routes_and_both_doors(registry) -> None:
    with ThreadPoolExecutor(1) as pool:
        app = build_app(api_routes(), Ops(pool, dict, registry))

    root = {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method == "GET" and not r.resource.canonical.startswith("/api/v1")}
    assert root == {("GET", p) for p in ("/", "/static/{name}", "/healthz", "/readyz",
                                          "/metrics")}
    mounted = {r.resource.canonical for r in app.router.routes()
               if r.resource.canonical.startswith("/api/v1/")}
    # both front doors inside the one /api/v1 application
    doors = {"/api/v1" + r.resource.canonical for r in api_routes().router.routes()}
    assert mounted == doors and "/api/v1/sessions" in doors and "/api/v1/auth/login" in doors
