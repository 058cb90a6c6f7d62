"""Capacity over the network: the usage API, restore-start latency through a running appliance,
the link probe against a loopback listener (the figures themselves are
tests/unit/test_capacity.py)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp

from appliance.accounts import Accounts
from appliance.capacity.network import LinkProbe
from appliance.capacity.report import monthly_report
from appliance.capacity.samples import Samples
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import Datastore

from ..conftest import Appliance, agent_cmd
from ..treeutil import run
from ..unit.test_capacity import GB, record, register, settings
from .test_cli import free_port


async def test_usage_api_needs_an_admin_token(appliance: Appliance, tmp_path: Path) -> None:
    host_token = appliance.add_host("web01")
    admin = appliance.store.index.add_api_token("provider", "read")
    fp = bytes.fromhex(appliance.fingerprint.replace(":", ""))
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp))) as http:
        url = f"{appliance.url}/api/v1/usage"
        async with http.get(url) as r:
            assert r.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {host_token}"}) as r:
            assert r.status == 403 and (await r.json())["error"] == "forbidden"
        auth = {"Authorization": f"Bearer {admin}"}
        async with http.get(url, params={"month": "2026-13"}, headers=auth) as r:
            assert r.status == 400 and "month" in (await r.json())["message"]
        async with http.get(url, params={"month": "2026-11"}, headers=auth) as r:
            assert r.status == 200
            rep = await r.json()
        assert rep["month"] == "2026-11" and rep["hosts"][0]["host"] == "web01"
        assert rep["disk"]["level"] in ("ok", "warning", "hard")
        # An admin token reads reports, never a host's data.
        async with http.get(f"{appliance.url}/api/v1/snapshots", headers=auth) as r:
            assert r.status == 403


async def test_restore_start_latency_is_recorded(appliance: Appliance, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    token = appliance.add_host("web01")
    env = appliance.env(token, tmp_path / "state")
    rc, _, err = await run(agent_cmd() + ["backup", str(src)], env)
    assert rc == 0, err
    rc, _, err = await run(agent_cmd() + ["restore", "latest", "--to", str(tmp_path / "o")], env)
    assert rc == 0, err
    # A host's own restore is not the service's to measure (it chooses when to fetch).
    assert RestoreLedger(appliance.store.index).since() == []
    # An account's download on the page is: request to first byte.
    Accounts(appliance.store.index).add("alice", "a long password here")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{appliance.url}/api/v1/auth/login",
                             json={"name": "alice", "password": "a long password here"}) as r:
            assert r.status == 200
        q = quote(str(src / "f").strip("/"))
        async with http.get(f"{appliance.url}/api/v1/hosts/web01/snapshots/latest/download"
                            f"?path={q}") as r:
            assert r.status == 200 and len(await r.read()) == 100_000
    for _ in range(50):  # recorded just after the first piece is written: may trail it
        rows = RestoreLedger(appliance.store.index).since()
        if rows and rows[0]["first_byte_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 1 and rows[0]["first_byte_at"] is not None
    assert rows[0]["account"] == "alice" and rows[0]["via"] == "page"
    latency = rows[0]["first_byte_at"] - rows[0]["requested_at"]
    assert 0 <= latency < 30 * 60
    rep = appliance.daemon.capacity.report()
    assert rep["restores"]["count"] == 1 and rep["restores"]["over_30_minutes"] == 0


async def test_rtt_probe_and_link_requirement(tmp_path: Path) -> None:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        probe = LinkProbe("127.0.0.1", port, 60, Samples(st.index).add_link_sample)
        rtt = await probe.probe_once()
        assert rtt is not None and rtt < 200
        server.close()
        await server.wait_closed()
        assert await LinkProbe("127.0.0.1", free_port(), 60,
                               Samples(st.index).add_link_sample).probe_once() is None
        register(st, "web01", datetime.now(UTC) - timedelta(days=40))
        record(st, "web01", datetime.now(UTC) - timedelta(hours=1), 100 * GB)
        rep = monthly_report(st.index, Samples(st.index), settings(), now=datetime.now(UTC))
        net = rep["network"]
        assert net["required_kbps"] == 1500.0 and net["meets_latency"] is True
        assert net["meets_throughput"] is None  # no replication transfer measured yet
        Samples(st.index).add_link_sample("throughput_kbps", 900.0)  # as replication will record
        net = monthly_report(st.index, Samples(st.index), settings(),
                             now=datetime.now(UTC))["network"]
        assert net["meets_throughput"] is False and net["ok"] is False
    finally:
        st.close()
