"""The load benchmark at a small size (`python -m benchmarks load` is the full one): agents
back up at once, restores run at once while replication to a real S3 server is still
sending, and the figures come out with every target judged. A harness that measured nothing
(no latency samples, no replication during the restores, unverified restores) fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.swift import SwiftServer

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/<kind>/ is two down)

pytestmark = pytest.mark.skipif(not SwiftServer.available(),
                                reason="Swift is not installed (.ci/run installs it)")


def test_agents_then_restores_while_replicating(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    # 250 kB/s of replication: the ~6 MB take ~25 s to leave, so the restores (a second or
    # two) surely overlap it, and it still catches up well within the test.
    res = subprocess.run([sys.executable, "-m", "benchmarks", "load", "--agents", "8",
                          "--restores", "4", "--size-mb", "6", "--replication-kbps", "2000",
                          "--work", str(tmp_path / "work"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 3), res.stderr[-3000:]
    r = json.loads(out.read_text())
    b, rs = r["backup"], r["restore"]
    assert r["agents"] == 8 and b["committed"] == 8 and b["failed"] == []
    assert r["restores"] == 4 and rs["completed"] == 4 and rs["failed"] == []
    assert rs["files_verified"] >= 4  # every restored file checked (size, SHA-256)
    assert b["bytes"] > 4e6 and b["throughput_mb_s"] > 0 and rs["throughput_mb_s"] > 0
    # Latency comes from the daemon's histogram, covering every agent request.
    routes = b["latency"]["routes"]
    assert routes["PUT /api/v1/sessions/{sid}/chunks/{cid}"]["requests"] > 0
    assert routes["POST /api/v1/sessions/{sid}/commit"]["requests"] == 8
    assert rs["latency"]["routes"]["GET /api/v1/snapshots/{snap}/chunks/{cid}"]["requests"] > 0
    for phase in (b, rs):
        lat = phase["latency"]
        assert 0 < lat["p50_seconds"] <= lat["p99_seconds"]
    # Replication was sending before the restores began and still had work when they ended:
    # it ran across them (a 1 MB chunk may take longer than the restores to leave at this
    # rate, so the bytes sent in between alone can be 0).
    assert rs["replication_bytes_sent_before"] > 0, rs
    assert rs["replication_pending_bytes_at_start"] > 0, rs
    assert rs["replication_pending_bytes_at_end"] > 0, rs
    assert "OK: the data center holds everything" in r["replication"]["dc_verify"]
    # At this size every target holds, and the table says so.
    assert r["errors"] == 0 and r["daemon_log_errors"] == []
    assert r["targets"] == {"no_errors": True, "no_request_over_5s": True,
                            "rss_under_300mb": True}, r["table"]
    assert res.returncode == 0
    assert "| API latency p50 / p99 |" in res.stdout
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["datasets"]  # nothing left
