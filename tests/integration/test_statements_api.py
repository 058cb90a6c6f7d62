"""GET /api/v1/statements/{month} on a running appliance: the provider's read, with an admin
API token; a closed month's bytes never change."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp

import provisioning
from appliance.config import ContractConfig
from appliance.daemon import Daemon

from ..conftest import Appliance, make_config
from ..unit.test_capacity import GB, at, record, register

EXAMPLE = Path(provisioning.__file__).parent / "contract.example.toml"


async def test_statement_api(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    # no statement-close job: the month is stored by the first read, after the history
    cfg = replace(cfg, contract=ContractConfig(terms_file=str(EXAMPLE),
                                               statement_close_hours=0))
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        app = Appliance.of(daemon, tmp_path / "data")
        register(app.store, "web01", at(2026, 8, 1))
        record(app.store, "web01", at(2026, 11, 5), 700 * GB)
        host_token = app.add_host("db01")
        admin = app.store.index.add_api_token("provider", "read")
        fp = bytes.fromhex(app.fingerprint.replace(":", ""))
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp))) as http:
            url = f"{app.url}/api/v1/statements/2026-11"
            async with http.get(url) as r:
                assert r.status == 401
            async with http.get(url, headers={"Authorization": f"Bearer {host_token}"}) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden"
            auth = {"Authorization": f"Bearer {admin}"}
            async with http.get(f"{app.url}/api/v1/statements/2026-13", headers=auth) as r:
                assert r.status == 400 and "month" in (await r.json())["message"]
            async with http.get(url, headers=auth) as r:
                assert r.status == 200
                first = await r.read()
                st = await r.json()
            assert st["month"] == "2026-11" and st["closed"] is True
            # capacity 2,000 GB: 700 GB is under the 1,000 GB minimum use
            assert st["charges"]["server"]["amount_cents"] == 1000 * 525
            app.store.set_window("web01", "01:00")
            async with http.get(url, headers=auth) as r:
                assert await r.read() == first
    finally:
        await daemon.stop()


async def test_statement_api_without_a_contract(appliance: Appliance) -> None:
    admin = appliance.store.index.add_api_token("provider", "read")
    fp = bytes.fromhex(appliance.fingerprint.replace(":", ""))
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp))) as http, \
            http.get(f"{appliance.url}/api/v1/statements/2026-11",
                     headers={"Authorization": f"Bearer {admin}"}) as r:
        assert r.status == 404 and "no contract" in (await r.json())["message"]


async def test_page_plan_refuses_retentions_outside_the_contract(appliance: Appliance) -> None:
    """IV.1.1.1 C: the plan form's API takes 8-5-4, 30-0-0 and 7-0-0 only (the default
    config does not allow custom retentions); a refused edit writes nothing. The host's kind
    (server or PC) is a field of the plan's API."""
    from .test_restore_jobs import http

    appliance.add_host("web01")
    admin = appliance.store.index.add_api_token("ops", "admin")
    async with http(appliance, admin) as s:
        resp = await s.put("/api/v1/hosts/web01/plan",
                           json={"excludes": ["*.x"], "policy": "3-2-1"})
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "bad_plan"
        (wrong,) = body["fields"]  # beside its field, like every wrong plan field
        assert wrong["field"] == "policy" and "8-5-4, 30-0-0, 7-0-0" in wrong["message"]
        resp = await s.put("/api/v1/hosts/web01/plan", json={"policy": "7-0-0"})
        assert resp.status == 200 and (await resp.json())["policy"] == "7-0-0"
        view = await (await s.get("/api/v1/hosts/web01/plan")).json()
        assert view["plan"]["excludes"] == [] and view["kind"] == "server"
        # the host's kind is the plan form's field too
        resp = await s.put("/api/v1/hosts/web01/plan", json={"kind": "laptop"})
        assert resp.status == 400 and "'kind'" in (await resp.json())["message"]
        resp = await s.put("/api/v1/hosts/web01/plan", json={"kind": "pc"})
        assert resp.status == 200 and (await resp.json())["kind"] == "pc"
