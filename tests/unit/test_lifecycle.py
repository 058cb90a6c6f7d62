"""Snapshot lifecycle on the appliance: retention (prune), garbage collection, verification and
self-healing, index rebuild, the job history, the maintenance lock and the schedule.

Most tests drive a `Datastore` in a temporary directory through its public API, with a fake
clock so that snapshots get chosen receive times; a few run the real daemon, agent and `rdr`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance import wiring
from appliance.config import Config, MaintenanceConfig
from appliance.jobs.job import Job
from appliance.jobs.maintenance import Maintenance, MaintenanceSettings
from appliance.jobs.maintenance import rebuild as rebuild_index
from appliance.scheduler import Scheduler
from appliance.store import prune, snapshots
from appliance.store.datastore import CommitRequest, Datastore
from appliance.store.errors import Conflict, NotFound, StoreError
from appliance.store.gc import GarbageCollector, GcResult
from appliance.store.lock import HeldLock, exclusive
from appliance.store.retention import REMOVE, plan
from appliance.store.verify import Verifier
from appliance.wiring import periodic_jobs
from rdr_format.catalog import FILE, CatalogWriter, Entry, Range
from rdr_format.chunkfile import ChunkEncoder, chunk_id, possession_key, possession_proof
from rdr_format.manifest import Manifest, StreamRef

from ..conftest import rdr_cmd

NY = ZoneInfo("America/New_York")
#: First fake receive time: 18:00 in New York; 60 days from here cross the March DST change.
START = datetime(2026, 1, 15, 18, 0, tzinfo=NY)
#: Longer than one kernel timer tick. File timestamps come from the kernel's coarse clock, so
#: tests that need "touched after the cutoff" to be visible in an mtime step past one tick.
TICK = 0.03
ENC = ChunkEncoder()
COMMON = random.Random(1).randbytes(20_000)  # in every snapshot of the daily series


# --- helpers --------------------------------------------------------------------------------------


class FakeClock:
    """The `clock` a Datastore takes receive times from."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Datastore]:
    st = Datastore(tmp_path / "data", reserve_bytes=0, clock=clock)
    try:
        yield st
    finally:
        st.close()


def data(seed: int, size: int = 5000) -> bytes:
    """Incompressible bytes (stored raw, so a flipped payload byte is a hash mismatch)."""
    return random.Random(seed).randbytes(size)


def commit_files(store: Datastore, host: str, files: dict[bytes, bytes],
                 sid: str | None = None, reuse: frozenset[bytes] = frozenset(),
                 source: tuple[str, ...] = ("/srv",)) -> Manifest:
    """Commit a one-directory snapshot holding `files` through the public Datastore API, as an
    agent would: data chunks, then the catalog and directory-index chunks, then commit (with
    the paths it backed up: `source`, one backup source by default). The
    files named in `reuse` are not uploaded (an agent's unchanged files: their chunks come
    from the parent's catalog)."""
    if sid is None:
        sid, _ = store.open_session(host)
    entries = []
    for name, content in sorted(files.items()):
        c = ENC.encode(content)
        if name not in reuse:
            store.put_chunk(host, sid, c.id, c.data)
        entries.append(Entry(name, FILE, 0o644, size=len(content),
                             ranges=[Range(c.id, 0, len(content), len(content))]
                             if content else []))  # an empty file has no range
    cat, idx = bytearray(), bytearray()
    CatalogWriter(cat.extend, idx.extend).add_block(b"", entries)
    cat_chunk, idx_chunk = ENC.encode(bytes(cat)), ENC.encode(bytes(idx))
    for c in (cat_chunk, idx_chunk):
        store.put_chunk(host, sid, c.id, c.data)
    return store.commit(host, sid, CommitRequest(
        catalog=StreamRef([(cat_chunk.id, cat_chunk.plain_size)]),
        dirindex=StreamRef([(idx_chunk.id, idx_chunk.plain_size)]), source=list(source)))


def commit_at(store: Datastore, clock: FakeClock, when: datetime, host: str,
              files: dict[bytes, bytes]) -> str:
    clock.now = when
    return commit_files(store, host, files).snapshot


def daily_snapshots(store: Datastore, clock: FakeClock, host: str, days: int,
                    ) -> list[tuple[datetime, str]]:
    """One snapshot a day at 18:00 New York time: [(receive time, snapshot id)]."""
    out = []
    for i in range(days):
        when = START + timedelta(days=i)  # wall-clock arithmetic: 18:00 local across DST
        out.append((when, commit_at(store, clock, when, host,
                                    {b"common": COMMON, b"day": f"{host} day {i}".encode()})))
    return out


def orphan_chunk(store: Datastore, host: str, content: bytes, age: float = 7200.0) -> str:
    """A chunk no snapshot references (its session was aborted), last touched `age` s ago."""
    sid, _ = store.open_session(host)
    c = ENC.encode(content)
    store.put_chunk(host, sid, c.id, c.data)
    store.abort_session(host, sid)
    backdate(store, c.id, age)
    return c.id


def backdate(store: Datastore, cid: str, age: float) -> None:
    then = time.time() - age
    os.utime(store.chunks.path(cid), (then, then))


def chunk_files(store: Datastore) -> set[str]:
    return set(store.chunks.iter_ids())


def snapshot_chunks(store: Datastore, host: str, snap: str) -> set[str]:
    return set(store.snapshots.chunk_index(host, snap))


def snapshot_ids(store: Datastore, host: str) -> list[str]:
    return [r.snapshot for r in store.index.snapshots(host)]


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def maint(store: Datastore, **settings: object) -> Maintenance:
    return Maintenance(store, wiring.job_history(store), MaintenanceSettings(**settings))


def run_gc(gc: GarbageCollector, store: Datastore, dry_run: bool = False) -> GcResult:
    with Job(wiring.job_history(store), "gc") as job:
        return gc.run(job.progress, dry_run)


def write_config(tmp_path: Path, data_dir: Path, policy: str = "8-5-4") -> Path:
    cfg = tmp_path / "rdr.toml"
    cfg.write_text(f"[store]\npath = '{data_dir}'\nreserve_mb = 0\n"
                   f"[retention]\npolicy = '{policy}'\n"
                   "[replication]\nenabled = false\n")  # prune tests: no replication guard
    return cfg


def rdr(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*rdr_cmd(), *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120, check=False)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# --- prune: retention plan and guards -------------------------------------------------------------


def test_prune_keeps_exactly_the_retention_plan(store: Datastore, clock: FakeClock) -> None:
    """8-5-4 over 60 daily snapshots removes exactly what retention.plan marks "remove":
    directories and index rows go, and every decision says why."""
    store.add_host("web01")
    series = daily_snapshots(store, clock, "web01", 60)
    verdict = plan([when for when, _ in series], "8-5-4", "America/New_York")
    expected_kept = {snap for when, snap in series if verdict[when] != REMOVE}
    assert 8 < len(expected_kept) < 60

    decisions = maint(store).prune()

    assert [d.snapshot for d in decisions] == [snap for _, snap in series]
    assert {d.snapshot for d in decisions if d.keep} == expected_kept
    for (when, _), d in zip(series, decisions, strict=True):
        assert d.rule == verdict[when]
        assert d.reason == (f"kept by the {d.rule} rule of 8-5-4" if d.keep else "outside 8-5-4")
    assert set(snapshot_ids(store, "web01")) == expected_kept
    host_dir = store.root / "snapshots" / "web01"
    assert {p.name for p in host_dir.iterdir()} == expected_kept  # no leftovers either
    assert series[-1][1] in expected_kept


def test_protected_snapshot_is_kept_and_marked_on_disk(store: Datastore,
                                                       clock: FakeClock) -> None:
    """An admin's protection keeps a snapshot the plan would remove, and lives in a
    `protected` marker file beside the manifest (so it survives an index rebuild)."""
    store.add_host("web01")
    old, mid, new = (commit_at(store, clock, START + timedelta(days=i), "web01",
                               {b"f": data(i)}) for i in range(3))
    store.protect("web01", old, True)
    marker = store.snapshots.dir("web01", old) / "protected"
    assert marker.exists()
    assert store.index.snapshot("web01", old).protected

    decisions = {d.snapshot: d for d in maint(store, default_policy="1-0-0").prune()}
    assert decisions[old].keep and decisions[old].reason == "protected by an admin"
    assert not decisions[mid].keep and decisions[mid].reason == "outside 1-0-0"
    assert decisions[new].keep and decisions[new].rule == "daily"
    assert snapshot_ids(store, "web01") == [old, new]

    store.protect("web01", old, False)
    assert not marker.exists()
    maint(store, default_policy="1-0-0").prune()
    assert snapshot_ids(store, "web01") == [new]
    with pytest.raises(NotFound):
        store.protect("web01", old, True)


def test_newest_snapshot_is_never_removed(store: Datastore, clock: FakeClock,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1-0-0 and two snapshots on one local day the plan keeps the newer; and even a
    plan that removes everything cannot take the newest snapshot of a source."""
    store.add_host("web01")
    morning = commit_at(store, clock, START.replace(hour=8), "web01", {b"f": data(1)})
    evening = commit_at(store, clock, START.replace(hour=20), "web01", {b"f": data(2)})
    decisions = maint(store, default_policy="1-0-0").prune(dry_run=True)
    assert [(d.snapshot, d.keep) for d in decisions] == [(morning, False), (evening, True)]

    monkeypatch.setattr(prune, "plan", lambda times, policy, tz: dict.fromkeys(times, REMOVE))
    decisions = maint(store, default_policy="1-0-0").prune()
    assert [(d.snapshot, d.keep) for d in decisions] == [(morning, False), (evening, True)]
    assert decisions[1].reason == "the newest snapshot of a source is never removed"
    assert snapshot_ids(store, "web01") == [evening]


def test_replication_guard_and_force(store: Datastore, clock: FakeClock) -> None:
    """When replication is required, unreplicated snapshots are kept (the reason says so);
    --force removes them and the reason says it was --force."""
    store.add_host("web01")
    snaps = [commit_at(store, clock, START + timedelta(days=i), "web01", {b"f": data(i)})
             for i in range(3)]
    m = maint(store, default_policy="1-0-0", replication_required=True)

    decisions = m.prune()
    assert all(d.keep for d in decisions)
    assert [d.reason for d in decisions[:2]] == ["not replicated to the data center yet"] * 2
    assert snapshot_ids(store, "web01") == snaps

    # A replicated snapshot outside the policy needs no force.
    rows = store.index.snapshots("web01")
    rows[0] = dataclasses.replace(rows[0], replicated_at=1.0)
    by_decide = prune.decide(rows, prune.Policy.parse("1-0-0"), "America/New_York",
                             replication_required=True)
    assert [d.keep for d in by_decide] == [False, True, True]
    assert by_decide[0].reason == "outside 1-0-0"

    forced = m.prune(force=True)
    assert [d.keep for d in forced] == [False, False, True]
    for d in forced[:2]:
        assert "--force" in d.reason and "replicated" in d.reason
    assert snapshot_ids(store, "web01") == snaps[2:]


# --- per-host policy ------------------------------------------------------------------------------


def test_per_host_policy_overrides_default(store: Datastore, clock: FakeClock) -> None:
    """Datastore.set_policy gives one host its own schedule; a bad policy is refused with a
    message saying what a policy looks like, and changes nothing."""
    store.add_host("web01")
    store.add_host("web02")
    daily_snapshots(store, clock, "web01", 10)
    daily_snapshots(store, clock, "web02", 10)
    store.set_policy("web01", "7-0-0")
    assert store.index.host_policy("web01") == "7-0-0"

    for bad in ("weekly", "7-0", "0-0-0", "-1-0-0"):
        with pytest.raises(StoreError) as err:
            store.set_policy("web01", bad)
        assert err.value.code == "bad_policy"
        assert "D-W-M" in err.value.message, err.value.message
    assert store.index.host_policy("web01") == "7-0-0"
    with pytest.raises(NotFound):
        store.set_policy("nosuch", "7-0-0")

    decisions = maint(store, default_policy="30-0-0").prune()
    kept = {h: sum(d.keep for d in decisions if d.host == h) for h in ("web01", "web02")}
    assert kept == {"web01": 7, "web02": 10}
    assert all("7-0-0" in d.reason for d in decisions if d.host == "web01")
    assert len(snapshot_ids(store, "web01")) == 7

    store.set_policy("web01", None)  # back to the default
    assert maint(store, default_policy="30-0-0").pruner().policy_for("web01") == \
        prune.Policy.parse("30-0-0")


def test_cli_policy_and_dry_run_prune(tmp_path: Path, store: Datastore,
                                      clock: FakeClock) -> None:
    """`rdr hosts set --policy` then `rdr prune --dry-run --json` explains each decision and
    removes nothing; `rdr prune --host nosuch` fails with one line."""
    store.add_host("web01")
    series = daily_snapshots(store, clock, "web01", 35)
    cfg = write_config(tmp_path, store.root)

    res = rdr(cfg, "hosts", "set", "web01", "--policy", "30-0-0")
    assert res.returncode == 0, res.stderr
    assert "30-0-0" in res.stdout
    res = rdr(cfg, "prune", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    decisions = json.loads(res.stdout)
    assert [d["snapshot"] for d in decisions] == [s for _, s in series]
    assert all(d["reason"] for d in decisions)
    assert [d["snapshot"] for d in decisions if not d["keep"]] == [s for _, s in series[:5]]
    assert {d["reason"] for d in decisions if not d["keep"]} == {"outside 30-0-0"}
    assert snapshot_ids(store, "web01") == [s for _, s in series]
    assert all(store.snapshots.dir("web01", s).exists() for _, s in series)

    res = rdr(cfg, "prune", "--host", "nosuch")
    assert "no host named 'nosuch'" in one_line_error(res)


# --- agents cannot delete -------------------------------------------------------------------------


# --- garbage collection ---------------------------------------------------------------------------


def two_snapshots_one_pruned(store: Datastore, clock: FakeClock) -> tuple[set[str], str]:
    """web01 with an old snapshot (pruned by 1-0-0) and a new one sharing a chunk with it.
    Returns the chunks only the removed snapshot referenced, and the surviving snapshot."""
    store.add_host("web01")
    old = commit_at(store, clock, START, "web01", {b"a": data(1), b"shared": data(3)})
    new = commit_at(store, clock, START + timedelta(days=1), "web01",
                    {b"b": data(2), b"shared": data(3)})
    doomed = snapshot_chunks(store, "web01", old) - snapshot_chunks(store, "web01", new)
    assert chunk_id(data(1)) in doomed and chunk_id(data(3)) not in doomed
    maint(store, default_policy="1-0-0").prune()
    assert snapshot_ids(store, "web01") == [new]
    return doomed, new


def test_gc_deletes_only_chunks_of_removed_snapshots(store: Datastore,
                                                     clock: FakeClock) -> None:
    """After prune, GC (grace 0) deletes the chunks only removed snapshots referenced, reports
    the bytes freed, and keeps every chunk a live snapshot uses."""
    doomed, new = two_snapshots_one_pruned(store, clock)
    live = snapshot_chunks(store, "web01", new)
    freed = sum(store.chunks.size_of(c) for c in doomed)

    res = maint(store, gc_grace_seconds=0).gc()

    assert (res.chunks_removed, res.bytes_removed) == (len(doomed), freed)
    assert res.snapshots == 1 and res.live_chunks == len(live)
    assert res.chunks_scanned == len(live) + len(doomed)
    assert chunk_files(store) == live
    assert maint(store).verify().ok


def test_gc_grace_and_dry_run(store: Datastore, clock: FakeClock) -> None:
    """A long grace keeps young unreferenced chunks (counted as too young); a dry run deletes
    nothing but reports what the real run then does."""
    doomed, _ = two_snapshots_one_pruned(store, clock)
    before = chunk_files(store)

    young = maint(store, gc_grace_seconds=3600).gc()
    assert (young.chunks_removed, young.chunks_too_young) == (0, len(doomed))
    dry = maint(store, gc_grace_seconds=0).gc(dry_run=True)
    assert dry.dry_run and dry.chunks_removed == len(doomed) and dry.bytes_removed > 0
    assert chunk_files(store) == before

    real = maint(store, gc_grace_seconds=0).gc()
    assert (real.chunks_removed, real.bytes_removed) == (dry.chunks_removed, dry.bytes_removed)
    assert chunk_files(store) == before - doomed


def test_gc_spares_chunks_of_an_open_session(store: Datastore) -> None:
    """Chunks uploaded to an open session are not swept even with grace 0 (the cutoff is the
    session's creation), and are live once the session commits."""
    store.add_host("web01")
    old = orphan_chunk(store, "web01", data(9))
    sid, _ = store.open_session("web01")
    time.sleep(TICK)
    pending = ENC.encode(data(10))
    assert store.put_chunk("web01", sid, pending.id, pending.data)

    res = maint(store, gc_grace_seconds=0).gc()
    assert store.chunks.has(pending.id) and res.chunks_too_young == 1
    assert not store.chunks.has(old) and res.chunks_removed == 1  # the GC did run

    snap = commit_files(store, "web01", {b"f": data(10)}, sid=sid)
    res = maint(store, gc_grace_seconds=0).gc()
    assert res.chunks_removed == 0 and res.live_chunks == len(chunk_files(store))
    assert pending.id in snapshot_chunks(store, "web01", snap.snapshot)
    assert store.chunks.has(pending.id)


def test_gc_keeps_a_chunk_the_known_query_touched(store: Datastore) -> None:
    """A chunk the known-chunk query reported present (so the agent will not upload it) is
    kept while the session is open, even if no snapshot references it yet."""
    store.add_host("web01")
    reused = orphan_chunk(store, "web01", data(11))
    other = orphan_chunk(store, "web01", data(12))
    sid, _ = store.open_session("web01")
    time.sleep(TICK)
    # (its session was aborted, so the host proves it holds the content)
    key = possession_key(bytes.fromhex(store.session_nonce("web01", sid)))
    assert store.known("web01", sid, [reused], [possession_proof(key, data(11))]) == []

    res = maint(store, gc_grace_seconds=0).gc()
    assert store.chunks.has(reused)
    assert not store.chunks.has(other) and res.chunks_removed == 1

    snap = commit_files(store, "web01", {b"f": data(11)}, sid=sid)
    assert maint(store).verify().ok
    assert reused in snapshot_chunks(store, "web01", snap.snapshot)


def mtime(store: Datastore, cid: str) -> float:
    return os.stat(store.chunks.path(cid)).st_mtime


def test_commit_vouches_for_the_parents_chunks_without_touching_them(
        store: Datastore, clock: FakeClock) -> None:
    """A commit does not touch the chunks the host's newest snapshot also references (a
    metadata write per chunk: minutes for a big host on a cold disk) but touches a chunk it
    reuses from an older snapshot; after the parent is pruned, GC keeps every chunk of the new
    snapshot and it verifies."""
    store.add_host("web01")
    commit_at(store, clock, START, "web01", {b"older": data(5)})
    commit_at(store, clock, START + timedelta(days=1), "web01",
              {b"a": data(1), b"shared": data(3)})
    shared, older = chunk_id(data(3)), chunk_id(data(5))
    for cid in chunk_files(store):
        backdate(store, cid, 7200)
    before = mtime(store, shared)

    clock.now = START + timedelta(days=2)
    new = commit_files(store, "web01", {b"b": data(2), b"shared": data(3), b"older": data(5)},
                       reuse=frozenset({b"shared", b"older"}))

    assert mtime(store, shared) == before  # vouched for by the parent
    assert mtime(store, older) > time.time() - 60  # not in the parent: checked and touched
    assert {shared, older} <= snapshot_chunks(store, "web01", new.snapshot)
    maint(store, default_policy="1-0-0").prune()
    assert snapshot_ids(store, "web01") == [new.snapshot]
    maint(store, gc_grace_seconds=0).gc()
    assert snapshot_chunks(store, "web01", new.snapshot) <= chunk_files(store)
    assert chunk_id(data(1)) not in chunk_files(store)  # the GC did run
    assert maint(store).verify().ok


def test_commit_refuses_a_quarantined_parent_chunk_until_it_is_uploaded(
        store: Datastore, clock: FakeClock) -> None:
    """A parent's chunk quarantined as damaged is not vouched for: the commit that reuses it
    is refused naming it, the session stays open, and uploading it again heals the store."""
    store.add_host("web01")
    commit_at(store, clock, START, "web01", {b"shared": data(3)})
    shared = chunk_id(data(3))
    store.quarantine_chunk(shared, "test: flipped byte")
    sid, _ = store.open_session("web01")

    with pytest.raises(StoreError) as err:
        commit_files(store, "web01", {b"shared": data(3)}, sid=sid,
                     reuse=frozenset({b"shared"}))
    assert err.value.code == "missing_chunks" and shared in err.value.details["missing"]

    snap = commit_files(store, "web01", {b"shared": data(3)}, sid=sid)
    assert shared in snapshot_chunks(store, "web01", snap.snapshot)
    assert store.index.damaged() == set() and maint(store).verify().ok


def test_commit_after_its_parent_was_removed_checks_every_chunk(
        store: Datastore, clock: FakeClock) -> None:
    """If the parent is removed and GC deletes its chunks while a session is open, nothing
    vouches for the reused chunks any more: the commit is refused. (Since ownership, the
    refusal comes first as "unproven": no snapshot of the host holds them any more, and the
    session neither uploaded nor proved them.)"""
    store.add_host("web01")
    parent = commit_at(store, clock, START, "web01", {b"shared": data(3)})
    shared = chunk_id(data(3))
    backdate(store, shared, 7200)
    sid, _ = store.open_session("web01")
    store.remove_snapshot("web01", parent)
    maint(store, gc_grace_seconds=0).gc()
    assert not store.chunks.has(shared)

    with pytest.raises(StoreError) as err:
        commit_files(store, "web01", {b"shared": data(3)}, sid=sid,
                     reuse=frozenset({b"shared"}))
    assert err.value.code == "unproven_chunks" and shared in err.value.details["unproven"]
    assert store.index.session(sid).state == "open"


class CommitDuringSweep(GarbageCollector):
    """Lands a commit that reuses a doomed chunk after the mark phase, before the sweep."""

    def __init__(self, *args, host: str, files: dict[bytes, bytes], pause: float,
                 **kw) -> None:
        super().__init__(*args, **kw)
        self.host, self.files, self.pause = host, files, pause
        self.committed: Manifest | None = None

    def _sweep(self, ids: list[str], res: GcResult) -> None:
        if self.committed is None and ids:
            time.sleep(self.pause)
            self.committed = commit_files(self.store, self.host, self.files)
        super()._sweep(ids, res)


def test_commit_during_gc_sweep_keeps_its_chunks(store: Datastore, clock: FakeClock) -> None:
    """A snapshot committed while GC sweeps keeps the old chunk it reuses (the sweep
    re-checks mtimes under the commit lock), and verifies."""
    doomed, _ = two_snapshots_one_pruned(store, clock)
    reused = chunk_id(data(1))
    for cid in doomed:
        backdate(store, cid, 7200)
    clock.now = START + timedelta(days=2)
    gc = CommitDuringSweep(store, grace=0, stale_session_age=1e9, host="web01",
                           files={b"again": data(1)}, pause=TICK)

    res = run_gc(gc, store)

    assert gc.committed is not None
    assert store.chunks.has(reused) and res.chunks_too_young >= 1
    assert res.chunks_removed == len(doomed) - res.chunks_too_young  # the rest did go
    assert reused in snapshot_chunks(store, "web01", gc.committed.snapshot)
    assert maint(store).verify().ok


def test_gc_with_no_grace_keeps_chunks_touched_right_after_the_cutoff(
        store: Datastore) -> None:
    """Without any pause, a known query right after a session opens still protects the chunk
    it touched from a grace-0 GC (repeated, because the failure depends on the timer tick)."""
    store.add_host("web01")
    lost = []
    for i in range(10):
        cid = orphan_chunk(store, "web01", data(100 + i))
        sid, _ = store.open_session("web01")
        key = possession_key(bytes.fromhex(store.session_nonce("web01", sid)))
        assert store.known("web01", sid, [cid], [possession_proof(key, data(100 + i))]) == []
        run_gc(GarbageCollector(store, grace=0, stale_session_age=1e9), store)
        if not store.chunks.has(cid):
            lost.append(cid)
        store.abort_session("web01", sid)
    assert lost == []


# --- stale sessions -------------------------------------------------------------------------------


def test_gc_aborts_stale_sessions(tmp_path: Path) -> None:
    """GC aborts open sessions older than stale_session_seconds whose agent is gone (not a
    live one, not a young one, not in a dry run), and then collects what they uploaded."""
    root = tmp_path / "data"
    st = Datastore(root, reserve_bytes=0)
    st.add_host("gone")
    st.add_host("busy")
    stale_sid, _ = st.open_session("gone")
    left = ENC.encode(data(20))
    st.put_chunk("gone", stale_sid, left.id, left.data)
    st.close()
    st = Datastore(root, reserve_bytes=0)  # a restart: nobody has used "gone"'s session since
    try:
        busy_sid, _ = st.open_session("busy")

        assert maint(st, stale_session_seconds=3600, gc_grace_seconds=0).gc() \
            .sessions_aborted == 0
        assert maint(st, stale_session_seconds=0, gc_grace_seconds=0).gc(dry_run=True) \
            .sessions_aborted == 0
        assert st.index.session(stale_sid).state == "open"

        res = maint(st, stale_session_seconds=0, gc_grace_seconds=0).gc()
        assert res.sessions_aborted == 1
        assert st.index.session(stale_sid).state == "aborted"
        assert st.index.session(busy_sid).state == "open"
        assert not st.chunks.has(left.id)
    finally:
        st.close()


# --- verify ---------------------------------------------------------------------------------------


def two_hosts(store: Datastore, clock: FakeClock) -> tuple[str, str]:
    store.add_host("web01")
    store.add_host("web02")
    a = commit_at(store, clock, START, "web01", {b"f": data(30), b"g": data(31)})
    b = commit_at(store, clock, START, "web02", {b"h": data(32)})
    return a, b


def test_verify_quarantines_a_damaged_chunk(store: Datastore, clock: FakeClock) -> None:
    """A chunk with a flipped payload byte is found, moved to chunks/.quarantine and listed;
    the snapshot using it is affected, the other is not."""
    a, b = two_hosts(store, clock)
    bad = chunk_id(data(30))
    total = len(chunk_files(store))
    flip_byte(store.chunks.path(bad), 8 + 1234)

    res = maint(store).verify(sample_percent=100)

    assert not res.ok
    assert res.chunks_checked == res.chunks_total == total
    assert res.damaged == [bad]
    assert [(x["host"], x["snapshot"]) for x in res.affected] == [("web01", a)]
    assert res.snapshots_checked == 2
    assert not store.chunks.has(bad)
    assert (store.root / "chunks" / ".quarantine" / bad).exists()
    assert store.index.damaged() == {bad}
    assert store.damaged_in("web01", a) == [bad]
    assert store.damaged_in("web02", b) == []


def test_verify_reports_a_missing_chunk(store: Datastore, clock: FakeClock) -> None:
    """A deleted chunk file shows as missing, and the snapshots using it as affected."""
    a, _ = two_hosts(store, clock)
    gone = chunk_id(data(31))
    store.chunks.path(gone).unlink()
    res = maint(store).verify()
    assert not res.ok and res.damaged == [] and res.missing == [gone]
    assert [(x["host"], x["snapshot"]) for x in res.affected] == [("web01", a)]
    assert gone in res.affected[0]["chunks"]


def test_verify_clean_store_and_sample(store: Datastore, clock: FakeClock) -> None:
    """A clean store verifies ok, every chunk checked at 100 %; a 50 % sample checks some."""
    store.add_host("web01")
    commit_at(store, clock, START, "web01", {f"f{i}".encode(): data(i, 500) for i in range(40)})
    total = len(chunk_files(store))
    res = maint(store).verify()
    assert res.ok and res.chunks_checked == res.chunks_total == total
    assert res.snapshots_checked == 1
    with Job(wiring.job_history(store), "verify") as job:
        sample = Verifier(store).run(job.progress, sample_percent=50, seed=7)
    assert sample.ok and 0 < sample.chunks_checked < total == sample.chunks_total


def test_rdr_verify_exit_codes(tmp_path: Path, store: Datastore, clock: FakeClock) -> None:
    """`rdr verify` exits 0 on a clean store (also with --sample and --rate) and 3 when it
    found problems."""
    two_hosts(store, clock)
    cfg = write_config(tmp_path, store.root)
    res = rdr(cfg, "verify")
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    res = rdr(cfg, "verify", "--sample", "50", "--rate", "500", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["sample_percent"] == 50

    bad = chunk_id(data(32))
    flip_byte(store.chunks.path(bad), 8)
    res = rdr(cfg, "verify")
    assert res.returncode == 3, res.stderr
    assert f"damaged chunk {bad}" in res.stdout and "PROBLEMS FOUND" in res.stdout


# --- self-healing, end to end ---------------------------------------------------------------------


# --- concurrent commit and scan -------------------------------------------------------------------


def test_verify_running_during_a_commit_does_not_break_it(
        store: Datastore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled verify (or GC mark) that lists snapshots while a commit is writing its
    snapshot directory must not make the commit fail."""
    store.add_host("web01")
    write_index = snapshots.write_chunk_index

    def write_then_verify(path: Path, ids: set[str]) -> None:
        write_index(path, ids)
        maint(store).verify()  # runs at this instant, in another thread in real life

    monkeypatch.setattr(snapshots, "write_chunk_index", write_then_verify)
    snap = commit_files(store, "web01", {b"f": data(40)})
    monkeypatch.undo()
    assert snapshot_ids(store, "web01") == [snap.snapshot]
    assert maint(store).verify().ok


def test_the_commit_syncs_beside_the_catalog_check_and_publishes_after_both(
        store: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit's sync needs no catalog (every chunk was written before the commit began),
    so it starts with the catalog's validation instead of after it; the snapshot is
    published only once both are done. Here the validation waits until the sync has
    started: run one after the other, it would wait in vain."""
    store.add_host("web01")
    order: list[str] = []
    sync_started, validating = threading.Event(), threading.Event()
    sync, validate = store.chunks.sync, store._validate

    def slow_sync() -> None:
        order.append("sync start")
        sync_started.set()
        validating.wait(10)  # a disk still writing once the validation has begun
        sync()
        order.append("sync done")

    def waiting_validate(*args: object):
        order.append("validate start" if sync_started.wait(10) else "validate alone")
        validating.set()
        return validate(*args)

    monkeypatch.setattr(store.chunks, "sync", slow_sync)
    monkeypatch.setattr(store, "_validate", waiting_validate)
    write_index = snapshots.write_chunk_index
    monkeypatch.setattr(snapshots, "write_chunk_index",
                        lambda path, ids: (order.append("publish"), write_index(path, ids)))
    commit_files(store, "web01", {b"f": data(41)})
    assert order == ["sync start", "validate start", "sync done", "publish"]


def test_a_failed_sync_fails_the_commit_and_publishes_nothing(
        store: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_host("web01")

    def broken_sync() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.chunks, "sync", broken_sync)
    with pytest.raises(OSError):
        commit_files(store, "web01", {b"f": data(42)})
    assert snapshot_ids(store, "web01") == []


# --- index rebuild --------------------------------------------------------------------------------


def test_rebuild_index_restores_everything(store: Datastore, clock: FakeClock) -> None:
    """Deleting index.sqlite and rebuilding brings back snapshots, the protected flag, the
    per-host policy and the hosts' tokens; rebuild refuses while the daemon runs."""
    root = store.root
    t1 = store.add_host("web01")
    t2 = store.add_host("web02")
    daily_snapshots(store, clock, "web01", 3)
    daily_snapshots(store, clock, "web02", 2)
    protected = snapshot_ids(store, "web01")[1]
    store.protect("web01", protected, True)
    store.set_policy("web02", "7-0-0")
    t2 = store.rotate_token("web02")
    before = store.index.snapshots()
    store.close()

    claim = HeldLock(root / "daemon.lock", "a daemon runs")
    try:
        with pytest.raises(Conflict) as err:
            rebuild_index(root)
        assert err.value.code == "daemon_running"
    finally:
        claim.release()
    for suffix in ("", "-wal", "-shm"):
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)

    res = rebuild_index(root)
    assert res["hosts"] == 2 and res["snapshots"] == 5 and res["hosts_without_record"] == []

    st = Datastore(root, reserve_bytes=0)
    try:
        assert st.index.snapshots() == before
        assert st.index.snapshot("web01", protected).protected
        assert st.index.host_policy("web02") == "7-0-0"
        assert st.index.host_policy("web01") is None
        assert st.index.host_for_token(t1) == "web01"
        assert st.index.host_for_token(t2) == "web02"
    finally:
        st.close()


def test_rebuild_index_remembers_damaged_chunks(store: Datastore, clock: FakeClock) -> None:
    """A chunk verify quarantined is still reported damaged after an index rebuild."""
    a, _ = two_hosts(store, clock)
    bad = chunk_id(data(30))
    flip_byte(store.chunks.path(bad), 8)
    assert maint(store).verify().damaged == [bad]
    root = store.root
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    rebuild_index(root)
    st = Datastore(root, reserve_bytes=0)
    try:
        assert st.damaged_in("web01", a) == [bad]
    finally:
        st.close()


# --- job history ----------------------------------------------------------------------------------


def test_job_history(tmp_path: Path, store: Datastore, clock: FakeClock) -> None:
    """prune, gc and verify each leave a 'done' row with progress 1.0 and a JSON result; a
    failing body leaves 'failed' with its message; a row left 'running' by a dead process is
    'interrupted' at the next open; `rdr jobs --json` lists them."""
    two_hosts(store, clock)
    m = maint(store, gc_grace_seconds=0)
    m.prune()
    m.gc()
    m.verify()
    with pytest.raises(RuntimeError), Job(wiring.job_history(store), "test"):
        raise RuntimeError("the disk caught fire")
    left = wiring.job_history(store).start("gc")  # as if the process died here

    rows = {j["id"]: j for j in wiring.job_history(store).list()}
    by_kind = {j["kind"]: j for j in rows.values() if j["id"] != left}
    for kind in ("prune", "gc", "verify"):
        j = by_kind[kind]
        assert (j["state"], j["progress"]) == ("done", 1.0), j
        assert isinstance(json.loads(j["result"]), dict) and j["message"]
    assert json.loads(by_kind["verify"]["result"])["ok"] is True
    assert json.loads(by_kind["gc"]["result"])["snapshots"] == 2
    failed = by_kind["test"]
    assert (failed["state"], failed["message"], failed["result"]) == \
        ("failed", "the disk caught fire", None)
    assert rows[left]["state"] == "running"

    # Nobody holds the maintenance lock, so the 'running' row belongs to a dead process.
    again = {j["id"]: j for j in wiring.job_history(store).recent()}
    assert again[left]["state"] == "interrupted" and again[left]["finished_at"]

    res = rdr(write_config(tmp_path, store.root), "jobs", "--json")
    assert res.returncode == 0, res.stderr
    listed = {j["id"]: (j["kind"], j["state"]) for j in json.loads(res.stdout)}
    assert listed == {i: (j["kind"], j["state"]) for i, j in again.items()}


def test_rdr_jobs_shows_a_running_job_as_running(tmp_path: Path, store: Datastore) -> None:
    """Looking at the history while a job runs (the reason to look) shows it running."""
    cfg = write_config(tmp_path, store.root)
    # Jobs run under the maintenance lock (Maintenance._job), as here.
    history = wiring.job_history(store)
    with exclusive(store.root / "maintenance.lock"), Job(history, "verify") as job:
        res = rdr(cfg, "jobs", "--json")
        assert res.returncode == 0, res.stderr
        listed = {j["id"]: j["state"] for j in json.loads(res.stdout)}
        assert listed[job.id] == "running"


# --- maintenance lock and schedule ----------------------------------------------------------------


def test_maintenance_jobs_exclude_each_other(store: Datastore, clock: FakeClock) -> None:
    """While one job holds maintenance.lock, gc (and prune, verify, rebuild) fail at once
    with a 'busy' Conflict and record nothing."""
    two_hosts(store, clock)
    m = maint(store)
    with exclusive(store.root / "maintenance.lock"):
        for call in (m.gc, m.prune, m.verify, lambda: rebuild_index(store.root)):
            with pytest.raises(Conflict) as err:
                call()
            assert err.value.code == "busy"
            assert "another prune, gc, verify or rebuild is running" in err.value.message
    assert wiring.job_history(store).list() == []
    assert m.gc().snapshots == 2  # free again


async def test_scheduler_runs_due_jobs(tmp_path: Path) -> None:
    """run_due runs prune, gc and verify the first time and nothing right after; a job with
    interval 0 never runs."""
    daily = MaintenanceConfig(prune_interval_hours=24, gc_interval_hours=24,
                              verify_interval_hours=24)
    off = MaintenanceConfig(prune_interval_hours=0, gc_interval_hours=0,
                            verify_interval_hours=0)
    mixed = MaintenanceConfig(prune_interval_hours=0, gc_interval_hours=24,
                              verify_interval_hours=24)
    with ThreadPoolExecutor(max_workers=1) as pool:
        for name, cfg, first in (("daily", daily, ["prune", "gc", "verify"]), ("off", off, []),
                                 ("mixed", mixed, ["gc", "verify"])):
            st = Datastore(tmp_path / name, reserve_bytes=0)
            try:
                st.add_host("web01")
                commit_files(st, "web01", {b"f": data(50)})
                m = maint(st)
                jobs = [j for j in periodic_jobs(Config(maintenance=cfg), m,
                                                 wiring.capacity(Config(), st, wiring.samples(st)))
                        if j.kind != "usage-sample"]
                sched = Scheduler(wiring.job_history(st), jobs, pool)
                assert await sched.run_due() == first, name
                assert await sched.run_due() == [], name
                assert sorted(j["kind"] for j in wiring.job_history(st).list()) == sorted(first)
                assert all(j["state"] == "done" for j in wiring.job_history(st).list())
            finally:
                st.close()


def test_chunk_indexes_stay_readable_while_held(tmp_path: Path) -> None:
    """Replication holds every snapshot's chunk index at once (its removal pass merges them
    all); the cache keeps 32. An index evicted, or removed with its snapshot, while a reader
    holds it must stay readable -- it used to be closed under the reader ("mmap closed or
    invalid" in every 50-host load run)."""
    store = snapshots.SnapshotStore(tmp_path / "snapshots")
    ids = {f"{i:064x}" for i in range(1, 4)}
    for n in range(40):
        d = store.dir("h", f"snap{n:02d}")
        d.mkdir(parents=True)
        snapshots.write_chunk_index(d / "chunks.idx", ids)
    held = [store.chunk_index("h", f"snap{n:02d}") for n in range(40)]
    store.remove("h", "snap39")
    assert not store.dir("h", "snap39").exists()
    for idx in held:  # the first 8 were evicted, the last one removed
        assert set(idx) == ids and f"{2:064x}" in idx
    with pytest.raises(NotFound):
        store.chunk_index("h", "snap39")
