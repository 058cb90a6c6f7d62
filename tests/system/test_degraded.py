"""A data disk that fails under the running daemon: the appliance goes degraded -- new backups
refused with the reason, /readyz and /metrics say so -- and nothing committed is touched."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
from pathlib import Path

import aiohttp
import pytest

from appliance.daemon import Daemon
from rdr_agent.client import ApplianceError
from rdr_format.chunkfile import ChunkEncoder

from ..conftest import Appliance, make_config
from ..integration.test_ingest_api import catalog_for, commit_body
from .test_watchers import (
    FS_GOING_NOLOGFLUSH,
    FS_IOC_SHUTDOWN,
    attach_and_mount,
    disk_image,
    fresh_loop,
)


async def test_a_failing_data_disk_degrades_the_appliance(tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.img", 128 << 20)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with fresh_loop(mnt) as index:
        attach_and_mount(index, img, mnt, mkfs=True)
        cfg = make_config(mnt / "pool", reserve_mb=0)
        cfg.health.watch_disks = True
        daemon = Daemon(cfg)
        await daemon.start()
        try:
            app = Appliance.of(daemon, mnt / "pool")
            token = app.add_host("web01")
            admin = app.store.index.add_api_token("prom")
            assert daemon.live.disks == {f"loop{index}": (True, 0)}
            await self_check_backup(app, token)
            before = await scrape(app, admin)  # Prometheus scraped before the disk died
            # The disk dies under the mounted filesystem (every write now fails with EIO).
            fd = os.open(mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
            finally:
                os.close(fd)
            for _ in range(200):
                if daemon.live.degraded:
                    break
                await asyncio.sleep(0.05)
            assert "data_disk" in daemon.live.degraded
            async with app.client(token) as c:
                with pytest.raises(ApplianceError) as err:
                    await c.open_session()
                assert err.value.status == 503
                assert "degraded" in err.value.message and f"loop{index}" in err.value.message
            fp = bytes.fromhex(app.fingerprint.replace(":", ""))
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp))) as http, \
                    http.get(f"{app.url}/readyz") as r:
                assert r.status == 503 and "data_disk" in (await r.json())["problems"]
            # /metrics answers every time, whether the index's pages are still cached
            # (fresh figures) or not (the last known ones, marked stale) -- never a 500
            last = 'rdr_host_last_success_timestamp_seconds{host="web01"}'
            for _ in range(3):
                m = await scrape(app, admin)
                assert m[f'rdr_data_disk_present{{device="loop{index}"}}'] == 0
                assert m['rdr_degraded{reason="data_disk"}'] == 1
                assert m[last] == before[last]
                assert all(m[f'rdr_metrics_stale{{section="{s}"}}'] in (0, 1)
                           for s in ("billing", "hosts", "jobs"))
            # The disk comes back, re-plugged under a new kernel name (as a USB disk does):
            # the dead filesystem is detached and the disk mounted again at the same place.
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mnt)], check=True)
            with fresh_loop() as index2:
                await asyncio.to_thread(attach_and_mount, index2, img, mnt, mkfs=False)
                try:
                    for _ in range(400):
                        if not daemon.live.degraded:
                            break
                        await asyncio.sleep(0.05)
                    assert daemon.live.degraded == {}
                    assert daemon.live.disks == {f"loop{index2}": (True, 1)}
                    await self_check_backup(app, token)
                finally:
                    await daemon.stop()
                    await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mnt)],
                                            check=False)
        finally:
            await daemon.stop()


async def scrape(app: Appliance, token: str) -> dict[str, float]:
    """/metrics as Prometheus reads it (200 required), as {series: value}."""
    fp = bytes.fromhex(app.fingerprint.replace(":", ""))
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp))) as http, \
            http.get(f"{app.url}/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
        text = await r.text()
        assert r.status == 200, text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def self_check_backup(app: Appliance, token: str) -> None:
    """A whole backup is accepted again: session, chunks, commit."""
    enc = ChunkEncoder()
    blob = enc.encode(b"after the disk came back" * 1000)
    cat, idx = catalog_for([(blob.id, blob.plain_size)])
    async with app.client(token) as c:
        sid = (await c.open_session())["session"]
        for chunk in (blob, *cat, *idx):
            await c.put_chunk(sid, chunk.id, chunk.data)
        assert (await c.commit(sid, commit_body(cat, idx)))["file_count"] == 1
