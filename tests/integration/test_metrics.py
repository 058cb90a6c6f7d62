"""Health as the provider sees it: a real Prometheus scrapes the daemon and is queried back;
promtool accepts a real scrape; /readyz tells the truth; systemd hears READY, watchdog pings
and STOPPING."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from appliance import wiring
from appliance.config import ReplicationConfig
from appliance.daemon import Daemon
from appliance.replication.engine import Replicator
from appliance.restores.ledger import RestoreLedger
from appliance.store.lock import HeldLock

from ..conftest import Appliance, agent_cmd, make_config, rdr_cmd
from ..treeutil import run
from .test_cli import free_port

needs_prometheus = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="Prometheus is not installed (.ci/run installs it)")


def session(app: Appliance) -> aiohttp.ClientSession:
    fp = bytes.fromhex(app.fingerprint.replace(":", ""))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp)))


async def scrape(app: Appliance, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session(app) as http, http.get(f"{app.url}/metrics", headers=headers) as r:
        return r.status, await r.text()


async def backup_something(app: Appliance, tmp_path: Path) -> str:
    token = app.add_host("web01")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(200_000))
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"],
                             app.env(token, tmp_path / "state"))
    assert rc == 0, err
    rc, _, err = await run(agent_cmd() + ["restore", "latest", "--to", str(tmp_path / "o")],
                           app.env(token, tmp_path / "state"))
    assert rc == 0, err
    return json.loads(out)["snapshot"]


async def test_metrics_need_an_admin_token_and_reflect_the_store(appliance: Appliance,
                                                                 tmp_path: Path) -> None:
    snap = await backup_something(appliance, tmp_path)
    # The agent's own restore (in backup_something) is not in the restore ledger; a restore
    # an account asked for on the page is.
    rid = RestoreLedger(appliance.store.index).start("web01", snap, "page", account="alice")
    RestoreLedger(appliance.store.index).first_byte(rid, "web01")
    assert (await scrape(appliance, None))[0] == 401
    host_token = appliance.store.index.add_api_token("not-a-host")  # an admin token works
    status, text = await scrape(appliance, host_token)
    assert status == 200
    lines = {line.split(" ")[0]: float(line.split(" ")[-1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    last = appliance.store.index.snapshots("web01")[-1].received_at
    assert lines['rdr_host_last_success_timestamp_seconds{host="web01"}'] == pytest.approx(last)
    assert lines['rdr_backups_total{host="web01",result="committed"}'] == 1
    assert lines["rdr_ingest_chunks_total"] >= 1 and lines["rdr_ingest_bytes_total"] > 200_000
    assert lines["rdr_restore_start_latency_seconds_count"] == 1
    assert lines['rdr_info{serial="unprovisioned",version="0.1.0"}'] == 1
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


async def test_readyz_reports_what_blocks_backups(appliance: Appliance) -> None:
    async with session(appliance) as http:
        async with http.get(f"{appliance.url}/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"]
        appliance.daemon.live.degraded["data_disk"] = "data disk vdb is missing"
        try:
            async with http.get(f"{appliance.url}/readyz") as r:
                body = await r.json()
                assert r.status == 503 and "data_disk" in body["problems"]
            # ... and a new backup is refused with the reason (503), not a crash.
            token = appliance.add_host("web02")
            async with appliance.client(token) as c:
                from rdr_agent.client import ApplianceError

                with pytest.raises(ApplianceError) as err:
                    await c.open_session()
                assert err.value.status == 503 and "missing" in err.value.message
        finally:
            appliance.daemon.live.degraded.clear()
        async with http.get(f"{appliance.url}/healthz") as r:
            assert r.status == 200


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_metrics_answer_while_the_index_cannot_be_read(appliance: Appliance,
                                                             tmp_path: Path) -> None:
    """The data disk's index unreadable (a dead disk): /metrics still answers 200 for a
    token it accepted before, with the last known figures marked stale -- never a 500,
    never an invented value -- and current ones as soon as the index reads again."""
    await backup_something(appliance, tmp_path)
    token = appliance.store.index.add_api_token("prometheus")
    status, text = await scrape(appliance, token)
    before = samples(text)
    assert status == 200 and before['rdr_metrics_stale{section="hosts"}'] == 0
    last_key = 'rdr_host_last_success_timestamp_seconds{host="web01"}'
    index = appliance.store.index

    def unreadable(*args: object) -> list:
        raise sqlite3.DatabaseError("database disk image is malformed")

    index._q = unreadable  # type: ignore[method-assign]  # every read, as on a dead disk
    appliance.daemon.live.degraded["data_disk"] = "the data disk loop9 is missing or failing"
    try:
        status, text = await scrape(appliance, token)
        assert status == 200, text
        now = samples(text)
        assert now['rdr_degraded{reason="data_disk"}'] == 1
        for section in ("billing", "hosts", "jobs"):
            assert now[f'rdr_metrics_stale{{section="{section}"}}'] == 1, section
            assert now[f'rdr_metrics_read_timestamp_seconds{{section="{section}"}}'] == \
                before[f'rdr_metrics_read_timestamp_seconds{{section="{section}"}}']
        assert now[last_key] == before[last_key]  # the last known value, not a made-up one
        assert now['rdr_backups_total{host="web01",result="committed"}'] == 1
        # a token never seen before cannot be checked now: unavailable, not "unauthorized"
        other = f"rdra_{'0' * 16}_{'x' * 40}"
        assert (await scrape(appliance, other))[0] == 503
    finally:
        del index._q
        appliance.daemon.live.degraded.clear()
    status, text = await scrape(appliance, token)
    assert status == 200 and samples(text)['rdr_metrics_stale{section="hosts"}'] == 0


async def test_replication_lag_is_current_after_commits_and_passes(tmp_path: Path) -> None:
    """A commit shows as pending on the next scrape and a pass (here by another process's
    kind of replicator, as `rdr replicate` is) as replicated -- not up to 30 s later."""
    cfg = make_config(tmp_path / "data")
    cfg.replication = ReplicationConfig(enabled=True, directory=str(tmp_path / "dc"),
                                        interval_seconds=3600)
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        app = Appliance.of(daemon, tmp_path / "data")
        token = app.store.index.add_api_token("prometheus")
        key = "rdr_replication_pending_snapshots"
        assert samples((await scrape(app, token))[1])[key] == 0  # now cached for 30 s
        # a pass holds the lock (as `rdr replicate` would): the daemon's own pass after the
        # commit is queued behind it, so the snapshot stays pending
        held = await asyncio.to_thread(HeldLock, app.store.root / "replication.lock", "busy",
                                       True)  # after the daemon's catch-up pass at start
        try:
            await backup_something(app, tmp_path)
            assert samples((await scrape(app, token))[1])[key] == 1
        finally:
            held.release()
        with ThreadPoolExecutor(2) as pool:
            st = app.store
            res = await Replicator(st, wiring.replication_state(st), wiring.samples(st),
                                   wiring.pending_seed(st), wiring.replication_target(cfg),
                                   wiring.replication_cipher(cfg), pool).run_pass()
        assert res.snapshots_replicated == 1
        assert samples((await scrape(app, token))[1])[key] == 0
    finally:
        await daemon.stop()


@needs_prometheus
async def test_a_real_prometheus_scrapes_and_answers(appliance: Appliance,
                                                     tmp_path: Path) -> None:
    await backup_something(appliance, tmp_path)
    token = appliance.store.index.add_api_token("prometheus")
    host, port = appliance.daemon.addresses[0]
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: rdr-appliance
    scheme: https
    tls_config:
      insecure_skip_verify: true   # the appliance's self-signed certificate (test only)
    authorization:
      credentials: {token}
    static_configs:
      - targets: ["{host}:{port}"]
""")
    proc = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            async def query(q: str) -> list[dict]:
                async with http.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                                    params={"query": q}) as r:
                    return (await r.json())["data"]["result"]

            deadline = time.monotonic() + 60
            result: list[dict] = []
            while time.monotonic() < deadline:
                try:
                    result = await query('rdr_host_last_success_timestamp_seconds{host="web01"}')
                except aiohttp.ClientError:
                    result = []
                if result:
                    break
                await asyncio.sleep(0.5)
            assert result, "Prometheus never got the metric"
            last = appliance.store.index.snapshots("web01")[-1].received_at
            assert float(result[0]["value"][1]) == pytest.approx(last)
            assert result[0]["metric"]["job"] == "rdr-appliance"
            up = await query('up{job="rdr-appliance"}')
            assert up and up[0]["value"][1] == "1"
            ratio = await query("rdr_disk_used_ratio")
            assert 0 < float(ratio[0]["value"][1]) < 1
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()


async def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[server]\nlisten = '127.0.0.1:{port}'\n[store]\npath = 'data'\n"
                   "[replication]\nenabled = false\n")
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="600000")
    proc = await asyncio.create_subprocess_exec(*rdr_cmd(), "serve", "--config", str(cfg),
                                                env=env, stderr=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    got: list[str] = []

    async def receive(until: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 1)).decode())
            except TimeoutError:
                continue
            if sum(until in m for m in got) >= (2 if until == "WATCHDOG=1" else 1):
                return
        raise AssertionError(f"never got {until}: {got}")

    try:
        await receive("READY=1")
        await receive("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        await receive("STOPPING=1")
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
    assert got.index(next(m for m in got if "READY=1" in m)) < \
        got.index(next(m for m in got if "STOPPING=1" in m))


async def test_rdr_status_summarises_health(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[server]\nlisten = '127.0.0.1:{port}'\n[store]\npath = 'data'\n"
                   "[replication]\ndirectory = 'dc'\n[appliance]\nserial = 'RDR-42'\n")
    from .test_cli import start_serve

    assert (await run(rdr_cmd() + ["init", "--config", str(cfg)]))[0] == 0
    rc, out, _ = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    daemon = await start_serve(cfg, port)
    try:
        for _ in range(100):  # the daemon publishes its live state right after start
            rc, out, err = await run(rdr_cmd() + ["status", "--json", "--config", str(cfg)])
            st = json.loads(out)
            if st["daemon"]["published_at"]:
                break
            await asyncio.sleep(0.1)
        assert rc == 0, err
        assert st["serial"] == "RDR-42" and st["daemon"]["running"]
        assert st["daemon"]["addresses"] == [f"127.0.0.1:{port}"]
        assert [h["host"] for h in st["hosts"]] == ["web01"]
        assert st["replication"]["lag"]["snapshots"] == 0 and st["degraded"] == {}
        rc, text, err = await run(rdr_cmd() + ["status", "--config", str(cfg)])
        assert rc == 0 and "RDR-42" in text and "running on" in text and "web01" in text
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon.communicate()
    rc, text, _ = await run(rdr_cmd() + ["status", "--config", str(cfg)])
    assert rc == 0 and "NOT RUNNING" in text
