"""Replication against a real S3 server (OpenStack Swift with s3api, on loopback), through
the `rdr` commands an operator uses: incremental, resumable after SIGKILL, enough alone for
disaster recovery, and one clear error for wrong credentials or an unreachable endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from appliance.store.datastore import Datastore
from hil.swift import SwiftServer

from ..conftest import rdr_cmd
from ..treeutil import run
from ..unit.test_lifecycle import commit_files
from .test_cli import free_port

pytestmark = pytest.mark.skipif(not SwiftServer.available(),
                                reason="Swift is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def swift(tmp_path_factory):
    server = SwiftServer(tmp_path_factory.mktemp("swift"))
    s3 = server.start()
    yield server, s3
    server.stop()


def chunk_puts(server: SwiftServer, bucket: str) -> list[str]:
    """Object names of successful chunk PUTs, from the proxy's request log."""
    text = (server.log_dir / "proxy-server.log").read_text(errors="replace") \
        if (server.log_dir / "proxy-server.log").exists() else \
        "".join(p.read_text(errors="replace") for p in server.log_dir.glob("proxy*.log"))
    return re.findall(rf"PUT /{bucket}/(c/[0-9a-f]+) HTTP/1\.[01] 20[01]", text)


def write_config(tmp_path: Path, s3, bucket: str, **extra: str) -> Path:
    cfg = tmp_path / "appliance.toml"
    lines = [f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0",
             "[replication]", "target = 's3'", f"endpoint = '{s3.endpoint}'",
             f"bucket = '{bucket}'", f"access_key = '{s3.access_key}'",
             f"secret_key = '{s3.secret_key}'", f"region = '{s3.region}'", "retries = 2"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def make_store(tmp_path: Path, n: int, seed: int) -> dict[bytes, bytes]:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    if not st.index.host_exists("web01"):
        st.add_host("web01")
    rng = random.Random(seed)
    content = {f"file{i:02d}".encode(): rng.randbytes(300_000) for i in range(n)}
    commit_files(st, "web01", content)
    st.close()
    return content


async def replicate(cfg: Path) -> dict:
    rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(cfg)])
    assert rc == 0, err
    return json.loads(out)


async def test_incremental_then_disaster_recovery(swift, tmp_path: Path) -> None:
    server, s3 = swift
    cfg = write_config(tmp_path, s3, "incremental")
    first_content = make_store(tmp_path, 20, 1)
    first = await replicate(cfg)
    assert first["snapshots_replicated"] == 1 and first["objects_sent"] == 22
    # Swift's s3api has no Object Lock: replication works, and says the copy can be deleted.
    assert first["immutable"] is False
    rc, out, err = await run(rdr_cmd() + ["replication", "status", "--json", "--config",
                                          str(cfg)])
    assert rc == 0 and json.loads(out)["immutable"] is False, err
    assert len(chunk_puts(server, "incremental")) == 22
    # Second snapshot: two files changed, one added.
    second_content = dict(first_content)
    second_content[b"file00"] = b"changed" * 5000
    second_content[b"file05"] = b"also changed" * 5000
    second_content[b"new"] = os.urandom(100_000)
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    commit_files(st, "web01", second_content)
    st.close()
    before = len(chunk_puts(server, "incremental"))
    second = await replicate(cfg)
    sent = chunk_puts(server, "incremental")[before:]
    assert second["objects_sent"] == len(sent) == 5  # 3 data chunks, catalog, index
    assert second["objects_skipped"] == 20 - 2 + 0
    rc, out, err = await run(rdr_cmd() + ["dc", "verify", "--deep", "--json", "--config",
                                          str(cfg)])
    assert rc == 0 and json.loads(out)["ok"], out
    # The appliance burns: only the bucket, its credentials and the escrowed key remain.
    key = tmp_path / "escrowed.key"
    shutil.copy(tmp_path / "data" / "replication.key", key)
    shutil.rmtree(tmp_path / "data")
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
    access = ["--endpoint", s3.endpoint, "--bucket", "incremental", "--access-key",
              s3.access_key, "--secret-key", s3.secret_key, "--key-file", str(key),
              "--config", str(bare)]
    rc, out, err = await run(rdr_cmd() + ["dc", "snapshots", "--json", *access])
    assert rc == 0, err
    snaps = json.loads(out)
    assert [s["host"] for s in snaps] == ["web01", "web01"]
    for snap, content in ((snaps[0]["snapshot"], first_content),
                          (snaps[1]["snapshot"], second_content)):
        out_dir = tmp_path / f"restored-{snap}"
        rc, out, err = await run(rdr_cmd() + ["dc", "restore", "--host", "web01",
                                              "--snapshot", snap, "--to", str(out_dir),
                                              *access])
        assert rc == 0, err
        for name, data in content.items():
            assert (out_dir / name.decode()).read_bytes() == data


async def test_sigkill_mid_replication_resumes_without_resending(swift, tmp_path: Path) -> None:
    server, s3 = swift
    make_store(tmp_path, 40, 2)
    # Slow enough to be killed mid-way: 8 Mbit/s, one object at a time.
    slow = write_config(tmp_path, s3, "resume", bandwidth_kbps="8000", concurrency="1")
    proc = await asyncio.create_subprocess_exec(
        *rdr_cmd(), "replicate", "--config", str(slow), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    db = tmp_path / "data" / "index.sqlite"
    for _ in range(600):
        await asyncio.sleep(0.05)
        with sqlite3.connect(db) as conn, contextlib.suppress(sqlite3.OperationalError):
            # (no dc_chunks table until `rdr replicate` has built replication's state)
            if conn.execute("SELECT COUNT(*) FROM dc_chunks").fetchone()[0] >= 8:
                break
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    sent_before = chunk_puts(server, "resume")
    assert 8 <= len(sent_before) < 42
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshots WHERE replicated_at IS NOT NULL"
                            ).fetchone()[0] == 0
    fast = write_config(tmp_path, s3, "resume")
    res = await replicate(fast)
    sent_after = chunk_puts(server, "resume")[len(sent_before):]
    assert res["snapshots_replicated"] == 1
    assert not set(sent_before) & set(sent_after)  # nothing that arrived is sent again
    assert len(set(sent_before) | set(sent_after)) == 42
    rc, out, err = await run(rdr_cmd() + ["dc", "verify", "--deep", "--config", str(fast)])
    assert rc == 0, out + err


async def test_wrong_credentials_and_unreachable_endpoint(swift, tmp_path: Path) -> None:
    server, s3 = swift
    make_store(tmp_path, 2, 3)
    bad = write_config(tmp_path, s3, "creds")
    bad.write_text(bad.read_text().replace(f"secret_key = '{s3.secret_key}'",
                                           "secret_key = 'wrong'"))
    rc, out, err = await run(rdr_cmd() + ["replicate", "--config", str(bad)])
    assert rc == 1 and "credentials" in err, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    gone = write_config(tmp_path, s3, "creds")
    gone.write_text(gone.read_text().replace(s3.endpoint, f"http://127.0.0.1:{free_port()}"))
    rc, out, err = await run(rdr_cmd() + ["replicate", "--config", str(gone)])
    assert rc == 1 and "cannot reach the data center" in err, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # Nothing was marked replicated by either failure.
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        assert all(r.replicated_at is None for r in st.index.snapshots())
    finally:
        st.close()
