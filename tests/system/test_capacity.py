"""The hard watermark on a real, small filesystem (a tmpfs mounted as root) under `rdr serve`."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

import pytest

from ..conftest import quiet_toml, rdr_cmd
from ..integration.test_cli import free_port
from ..treeutil import run
from .test_disk_full import wait_healthy


async def test_hard_watermark_refuses_new_backups_on_a_real_filesystem(tmp_path: Path) -> None:
    """On a 64 MB tmpfs filled past the 50 % hard mark by a ballast file: a new backup gets
    507 with what to do; a backup whose session opened before finishes; once space is back,
    backups are accepted again. Nothing committed is deleted to make room."""
    from rdr_agent.client import ApplianceClient, ApplianceError, Endpoint
    from rdr_format.chunkfile import ChunkEncoder

    from ..integration.test_ingest_api import catalog_for, commit_body

    data = tmp_path / "disk"
    data.mkdir()
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(quiet_toml(port, data, extra="[capacity]\nwarn_percent = [30.0, 40.0]\n"
                                              "hard_percent = 50.0\n"))
    daemon = await asyncio.create_subprocess_exec(
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        f"mount -t tmpfs -o size=64m rdr-test {data} && exec {rdr_cmd()[0]} serve "
        f"--config {cfg}", stderr=asyncio.subprocess.PIPE)
    try:
        await wait_healthy(port)

        async def inside(*cmd: str) -> tuple[int, str, str]:
            return await run(["nsenter", "-t", str(daemon.pid), "-m", *cmd])

        rc, out, err = await inside(*rdr_cmd(), "hosts", "add", "web01", "--config", str(cfg))
        token = out.strip().splitlines()[-1]
        _, pem, _ = await inside("cat", str(data / "tls" / "cert.pem"))
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        fp = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()
        enc = ChunkEncoder()
        blob = enc.encode(random.Random(1).randbytes(1_000_000))
        cat, idx = catalog_for([(blob.id, blob.plain_size)])
        async with ApplianceClient(Endpoint(f"https://127.0.0.1:{port}", token, fp),
                                   retries=0) as c:
            running = (await c.open_session())["session"]  # admitted while there was room
            rc, _, err = await inside("fallocate", "-l", "40M", str(data / "ballast"))
            assert rc == 0, err
            # A backup already running finishes.
            for chunk in (blob, *cat, *idx):
                await c.put_chunk(running, chunk.id, chunk.data)
            first = await c.commit(running, commit_body(cat, idx))
            # A new one is refused with a message that says what to do.
            with pytest.raises(ApplianceError) as refused:
                await c.open_session()
            assert refused.value.status == 507
            assert "hard limit" in refused.value.message and "rdr gc" in refused.value.message
            rc, out, _ = await inside(*rdr_cmd(), "usage", "--json", "--config", str(cfg))
            assert json.loads(out)["disk"]["level"] == "hard"
            rc, out, _ = await inside(*rdr_cmd(), "snapshots", "--json", "--config", str(cfg))
            assert [s["snapshot"] for s in json.loads(out)] == [first["snapshot"]]
            # Space back: accepted again.
            await inside("rm", str(data / "ballast"))
            again = await c.open_session()
            assert again["resumed"] is False
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await daemon.communicate()
        assert daemon.returncode == 0, err.decode()[-2000:]
