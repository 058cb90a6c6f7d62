"""The API's error mapping: an unreadable index is 503 (retry later), never a bare 500."""

from __future__ import annotations

import sqlite3

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.api.errors import error_middleware


async def test_an_unreadable_index_is_503_with_a_json_body() -> None:
    async def broken(request: web.Request) -> web.Response:
        raise sqlite3.DatabaseError("database disk image is malformed")

    async def crashing(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/broken", broken)
    app.router.add_get("/crashing", crashing)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/broken")
        body = await resp.json()
        assert resp.status == 503 and body["error"] == "store_unavailable"
        assert "data disk" in body["message"] and "malformed" not in body["message"]
        resp = await client.get("/crashing")
        assert resp.status == 500 and (await resp.json())["error"] == "internal"
