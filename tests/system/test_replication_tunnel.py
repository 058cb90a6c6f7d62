"""Replication through the real IPsec tunnel, as deployed: the daemon in the appliance's
network namespace replicates to Swift in the data center's namespace; the WAN link is cut
for 30 s in the middle. Replication completes, the outage is recorded, the data center copy
verifies, and a capture of the WAN shows only ESP-in-UDP: no request, no payload, no inner
address in plaintext."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.store.datastore import Datastore
from hil.swift import SwiftServer
from hil.tunnel import Tunnel, TunnelPlan, charon_installed

from ..conftest import rdr_cmd
from ..unit.test_lifecycle import commit_files
from .test_tunnel import Capture, esp_in_udp, ipv4

pytestmark = pytest.mark.skipif(
    not charon_installed() or not SwiftServer.available(),
    reason="needs strongSwan and Swift (.ci/run installs them)")

MARKER = b"CUSTOMER-PAYLOAD-MARKER-"
CUT_SECONDS = 30


def replicated(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        done = conn.execute("SELECT COUNT(*) FROM snapshots WHERE replicated_at IS NOT NULL"
                            ).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        try:  # replication's table, made when the daemon builds its state
            chunks = conn.execute("SELECT COUNT(*) FROM dc_chunks").fetchone()[0]
        except sqlite3.OperationalError:
            chunks = 0
    return done, total, chunks


async def test_replication_through_the_tunnel_survives_a_30s_cut(tmp_path: Path) -> None:
    plan = TunnelPlan(prefix="rr" + secrets.token_hex(3))
    dc_ip = plan.dc_inner.split("/")[0]
    with Tunnel(tmp_path / "rig", plan) as tunnel:
        swift = SwiftServer(tmp_path / "swift", host=dc_ip, netns=tunnel.dc_ns)
        s3 = swift.start()
        try:
            # 3 snapshots of 16 MB each, with a recognizable marker in the payload.
            st = Datastore(tmp_path / "data", reserve_bytes=0)
            st.add_host("web01")
            rng = random.Random(1)
            for i in range(3):
                commit_files(st, "web01", {
                    f"f{j}".encode(): MARKER * 10 + rng.randbytes(2_000_000) for j in range(8)
                } | {b"note": MARKER * 1000 + str(i).encode()})
            st.close()
            cfg = tmp_path / "appliance.toml"
            cfg.write_text(f"""
[server]
listen = "127.0.0.1:18443"
[store]
path = "{tmp_path / 'data'}"
reserve_mb = 0
[maintenance]
prune_interval_hours = 0
gc_interval_hours = 0
verify_interval_hours = 0
[capacity]
sample_interval_hours = 0
[replication]
target = "s3"
endpoint = "{s3.endpoint}"
bucket = "rdr-tunnel"
access_key = "{s3.access_key}"
secret_key = "{s3.secret_key}"
region = "{s3.region}"
tunnel_subnet = "{plan.dc_subnet}"
vici_socket = "{tunnel.vici_socket('appliance')}"
bandwidth_kbps = 40000
interval_seconds = 5
""")
            capture = Capture(tunnel, tunnel.dc_ns, tunnel.wan_if_dc, tmp_path / "wan.pcap")
            daemon = tunnel.popen("appliance", *rdr_cmd(), "serve", "--config", str(cfg),
                                  stdout=open(tmp_path / "daemon.log", "wb"),  # noqa: SIM115
                                  stderr=-2)
            db = tmp_path / "data" / "index.sqlite"
            try:
                for _ in range(600):  # replication under way
                    await asyncio.sleep(0.1)
                    if db.exists() and replicated(db)[2] >= 5:
                        break
                assert replicated(db)[2] >= 5, (tmp_path / "daemon.log").read_text()[-3000:]
                tunnel.cut()
                await asyncio.sleep(CUT_SECONDS)
                during = replicated(db)
                tunnel.restore()
                back = await asyncio.to_thread(tunnel.wait_up, 60)
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and replicated(db)[0] < 3:
                    await asyncio.sleep(0.5)
                done, total, _ = replicated(db)
                log = (tmp_path / "daemon.log").read_text()
                assert (done, total) == (3, 3), log[-4000:]
                assert during[0] < 3  # the cut really landed in the middle
            finally:
                daemon.send_signal(signal.SIGTERM)
                await asyncio.to_thread(daemon.wait, 30)
                frames = capture.stop()
            print(f"\ntunnel back {back:.1f} s after the link returned")
            # The outage was seen and recorded.
            with sqlite3.connect(db) as conn:
                events = conn.execute("SELECT up FROM tunnel_events ORDER BY at").fetchall()
            assert (0,) in events and events[-1] == (1,)
            # The data center copy is whole (checked from inside the appliance namespace).
            out = tunnel.run("appliance", *rdr_cmd(), "dc", "verify", "--deep", "--json",
                             "--config", str(cfg), capture_output=True, text=True)
            assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stdout + out.stderr
            st_out = tunnel.run("appliance", *rdr_cmd(), "replication", "status", "--json",
                                "--config", str(cfg), capture_output=True, text=True)
            status = json.loads(st_out.stdout)
            assert status["lag"]["snapshots"] == 0 and status["tunnel"]["outages_24h"] >= 1
            sas = status["tunnel"]["security_associations"]
            assert sas and sas[0]["state"] == "ESTABLISHED", sas
            assert sas[0]["children"][0]["bytes_out"] > 0
            # Replication's transfers are the link's throughput samples (usage report).
            with sqlite3.connect(db) as conn:
                kbps = [v for (v,) in conn.execute(
                    "SELECT value FROM link_samples WHERE kind = 'throughput_kbps'")]
            assert kbps and all(v > 0 for v in kbps)
            # Nothing readable crossed the WAN: no payload, no S3 request, no inner address.
            assert esp_in_udp(frames) > 1000
            inner = {plan.appliance_inner.split("/")[0], dc_ip}
            for frame in frames:
                assert MARKER not in frame
                assert b"AWS4-HMAC-SHA256" not in frame and b"PUT /" not in frame
                hdr = ipv4(frame)
                if hdr:
                    assert not {hdr[0], hdr[1]} & inner
        finally:
            swift.stop()
