"""A full data disk: backups are refused cleanly, nothing committed is harmed, and prune + gc
(which still work thanks to the reserve) make room again.

The appliance runs in a private mount namespace on a 40 MB tmpfs, so the disk really fills
(ENOSPC) without touching the machine's filesystems; the admin's commands enter the same
namespace with nsenter.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import ssl
import urllib.request
from pathlib import Path

from ..conftest import agent_cmd, quiet_toml, rdr_cmd
from ..integration.test_cli import free_port
from ..treeutil import assert_same_tree, restored_root, run


async def wait_healthy(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(100):
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"https://127.0.0.1:{port}/healthz",
                                    context=ctx, timeout=1)
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("appliance did not start")


async def test_full_disk_refuses_cleanly_and_recovers_by_prune_and_gc(tmp_path: Path) -> None:
    data = tmp_path / "disk"
    data.mkdir()
    port = free_port()
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(quiet_toml(port, data, reserve_mb=4,
                              extra='[retention]\npolicy = "1-0-0"\n'))
    daemon = await asyncio.create_subprocess_exec(
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        f"mount -t tmpfs -o size=40m rdr-test {data} && exec {rdr_cmd()[0]} serve "
        f"--config {cfg}", stderr=asyncio.subprocess.PIPE)
    try:
        await wait_healthy(port)

        async def admin(*args: str) -> tuple[int, str, str]:
            return await run(["nsenter", "-t", str(daemon.pid), "-m", *rdr_cmd(), *args,
                              "--config", str(cfg)])

        rc, out, err = await admin("hosts", "add", "fs01")
        assert rc == 0, err
        token = out.strip().splitlines()[-1]
        rc, fp_out, _ = await run(["nsenter", "-t", str(daemon.pid), "-m", "cat",
                                   str(data / "tls" / "cert.pem")])
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificate(fp_out.encode())
        env = dict(os.environ, RDR_URL=f"https://127.0.0.1:{port}", RDR_TOKEN=token,
                   RDR_FINGERPRINT=cert.fingerprint(hashes.SHA256()).hex(),
                   RDR_STATE_DIR=str(tmp_path / "state"))
        rng = random.Random(2)
        src = tmp_path / "src"
        src.mkdir()

        async def backup() -> tuple[int, str, str]:
            return await run(agent_cmd() + ["backup", str(src), "--json"], env)

        (src / "data.bin").write_bytes(rng.randbytes(13 * 1024 * 1024))
        rc, out, err = await backup()
        assert rc == 0, err
        first = json.loads(out)["snapshot"]
        (src / "data.bin").write_bytes(rng.randbytes(13 * 1024 * 1024))
        rc, out, err = await backup()
        assert rc == 0, err
        (src / "data.bin").write_bytes(rng.randbytes(13 * 1024 * 1024))
        rc, out, err = await backup()
        # Refused: one clear line, non-zero exit, nothing about tracebacks.
        assert rc == 1, (out, err)
        assert "full" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        rc, out, err = await admin("snapshots", "--json")
        listed = [s["snapshot"] for s in json.loads(out)]
        assert len(listed) == 2 and listed[0] == first
        rc, out, err = await admin("verify", "--json")
        assert rc == 0 and json.loads(out)["ok"], out  # what was committed is intact
        # A new session is refused outright while the disk is this full.
        rc, out, err = await backup()
        assert rc == 1 and "full" in err

        # Recovery: prune (1-0-0 keeps the newest) and gc free the first backup's space.
        rc, out, err = await admin("prune")
        assert rc == 0, err
        assert "removed 1 of 2" in out
        rc, out, err = await admin("gc", "--json")
        assert rc == 0, err
        assert json.loads(out)["bytes_removed"] > 12 * 1024 * 1024
        rc, out, err = await backup()
        assert rc == 0, err
        assert json.loads(out)["resumed_session"]  # it picked up what it had sent before
        rc, _, err = await run(agent_cmd() + ["restore", "latest", "--to",
                                              str(tmp_path / "out")], env)
        assert rc == 0, err
        assert_same_tree(src, restored_root(tmp_path / "out", src))
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
        _, err = await daemon.communicate()
        assert daemon.returncode == 0, err.decode()[-2000:]
