"""Retention, GC and verify against a running appliance: what agents may not do, and how the next
backup heals a damaged chunk (the store-level lifecycle is tests/unit/test_lifecycle.py)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from appliance import wiring
from appliance.jobs.maintenance import Maintenance, MaintenanceSettings
from appliance.store.datastore import Datastore
from rdr_format.catalog import FILE, iter_blocks

from ..conftest import Appliance, rdr_cmd
from ..treeutil import assert_same_tree, restored_root, run
from ..unit.test_lifecycle import (
    commit_files,
    data,
    flip_byte,
    snapshot_ids,
    write_config,
)
from .test_backup_restore import agent
from .test_ingest_api import raw_session


async def test_agents_cannot_delete_snapshots(appliance: Appliance) -> None:
    """No ingest route deletes a snapshot: DELETE with a valid token is 404/405 with a JSON
    error body, and the snapshot stays."""
    token = appliance.add_host("web01")
    snap = await asyncio.to_thread(commit_files, appliance.store, "web01", {b"f": data(1)})
    base = appliance.url + "/api/v1"
    async with raw_session(appliance, token) as http:
        for path in (f"/snapshots/{snap.snapshot}", "/snapshots/latest", "/snapshots",
                     f"/snapshots/{snap.snapshot}/chunks/{snap.catalog.chunks[0][0]}"):
            async with http.delete(base + path) as resp:
                body = await resp.json()
                assert resp.status in (404, 405), (path, body)
                assert body["error"] and body["message"]
    assert snapshot_ids(appliance.store, "web01") == [snap.snapshot]
    assert (appliance.store.snapshots.dir("web01", snap.snapshot) / "manifest.json").exists()


def make_source(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(random.Random(21).randbytes(3 * 1024 * 1024))
    (root / "notes.txt").write_text("notes\n" * 100)
    (root / "sub" / "a.txt").write_text("a")
    return root


def data_chunk_of(store: Datastore, host: str, snap: str, name: bytes) -> str:
    """The first chunk of file `name` in a snapshot's catalog."""
    m = store.snapshots.manifest(host, snap)
    for _, entries in iter_blocks(store.stream(m.catalog)):
        for e in entries:
            if e.name == name and e.type == FILE:
                return e.ranges[0].chunk
    raise AssertionError(f"{name!r} not in {snap}")


async def test_next_backup_heals_a_damaged_chunk(appliance: Appliance, tmp_path: Path) -> None:
    """After verify quarantines a chunk, the agent's next backup re-reads the file that used
    it and uploads it again: the commit succeeds, verify is clean, restore is exact."""
    src = make_source(tmp_path / "src")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, first, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    store = appliance.store
    bad = data_chunk_of(store, "web01", first["snapshot"], b"big.bin")
    flip_byte(store.chunks.path(bad), 8 + 4096)
    m = Maintenance(store, wiring.job_history(store), MaintenanceSettings())

    res = await asyncio.to_thread(m.verify)
    assert res.damaged == [bad]
    assert [x["snapshot"] for x in res.affected] == [first["snapshot"]]

    rc, second, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    assert second["files_read"] == 1  # big.bin, and only it
    assert second["chunks_new"] >= 1
    res = await asyncio.to_thread(m.verify)
    assert res.ok, res.to_json()
    assert store.index.damaged() == set()
    rc, out, err = await agent(appliance, token, state, "restore", "latest", "--to",
                               str(tmp_path / "out"))
    assert rc == 0, (out, err)
    assert_same_tree(src, restored_root(tmp_path / "out", src))


async def test_next_backup_heals_after_rdr_verify_from_the_cli(appliance: Appliance,
                                                               tmp_path: Path) -> None:
    """The admin's `rdr verify` (a separate process, allowed while the daemon runs) finds a
    damaged chunk; the next backup must still re-send it."""
    src = make_source(tmp_path / "src")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, first, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    bad = data_chunk_of(appliance.store, "web01", first["snapshot"], b"big.bin")
    flip_byte(appliance.store.chunks.path(bad), 8 + 4096)
    cfg = write_config(tmp_path, appliance.data_dir)
    rc, out, err = await run([*rdr_cmd(), "verify", "--config", str(cfg)])
    assert rc == 3 and bad in out, (out, err)

    rc, second, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    assert second["files_read"] == 1
