"""Replication with a local directory standing in for the data center: incremental,
resumable, encrypted, checkpointed, pruned in step, and enough alone for disaster recovery.
(The same engine against a real S3 server and through a real tunnel: test_replication_s3.)"""

from __future__ import annotations

import asyncio
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.jobs.maintenance import Maintenance, MaintenanceSettings
from appliance.replication.dc import dc_verify
from appliance.replication.engine import Replicator
from appliance.replication.targets import DirTarget, RateLimitedTarget, TargetError
from appliance.store.datastore import Datastore
from rdr_format.objects import DecryptError, ObjectCipher, chunk_name, load_or_create_key
from rdr_restore.objects import checkpoints, dc_restore

from ..conftest import rdr_cmd
from ..treeutil import run
from .test_lifecycle import commit_files

KEY = bytes(range(32))


class CountingTarget(DirTarget):
    """A directory target that counts uploads and can fail after a number of them."""

    def __init__(self, root: Path, fail_after: int | None = None) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.fail_after = fail_after

    async def put(self, name: str, data: bytes) -> None:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            raise TargetError("link lost (simulated)", transient=False)
        self.puts.append(name)
        await super().put(name, data)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


@pytest.fixture
def store(tmp_path: Path):
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("web01")
    yield st
    st.close()


def files(n: int, seed: int, size: int = 300_000) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    return {f"f{i}".encode(): rng.randbytes(size) for i in range(n)}


def replicator(store: Datastore, target, pool, **kw) -> Replicator:
    return Replicator(store, wiring.replication_state(store), wiring.samples(store),
                      wiring.pending_seed(store), target, ObjectCipher(KEY), pool, **kw)


async def test_incremental_second_pass_sends_only_new_objects(store, pool, tmp_path) -> None:
    commit_files(store, "web01", files(5, 1))
    target = CountingTarget(tmp_path / "dc")
    first = await replicator(store, target, pool).run_pass()
    assert first.snapshots_replicated == 1 and first.objects_sent == 7  # 5 data + catalog+index
    assert all(r.replicated_at for r in store.index.snapshots())
    assert (store.snapshots.dir("web01", store.index.snapshots()[0].snapshot)
            / "replicated").exists()
    # A transfer of over 1 MB leaves a throughput sample for the link requirement.
    assert len(wiring.samples(store).link_samples("throughput_kbps", 0)) == 1
    target.puts.clear()
    again = files(5, 1)
    again[b"f0"] = b"changed" * 1000
    commit_files(store, "web01", again)
    second = await replicator(store, target, pool).run_pass()
    assert second.snapshots_replicated == 1
    assert second.objects_sent == 3  # the changed file's chunk, the new catalog and index
    chunk_puts = [n for n in target.puts if n.startswith("c/")]
    assert len(chunk_puts) == 3
    assert (await replicator(store, target, pool).run_pass()).objects_sent == 0


async def test_whoever_reports_the_lag_is_told_of_each_change(store, pool, tmp_path) -> None:
    """on_change, given at construction (the daemon passes /metrics' invalidation), hears of
    every pass, and of each snapshot that reached the data center within it."""
    changes: list[int] = []
    rep = replicator(store, CountingTarget(tmp_path / "dc"), pool,
                     on_change=lambda: changes.append(1))
    assert (await rep.run_pass()).objects_sent == 0
    assert len(changes) == 1  # the pass itself, even with nothing to send
    commit_files(store, "web01", files(2, 3))
    commit_files(store, "web01", files(2, 4))
    assert (await rep.run_pass()).snapshots_replicated == 2
    assert len(changes) == 1 + 2 + 1  # each replicated snapshot, then the pass


async def test_nothing_readable_leaves_the_appliance(store, pool, tmp_path) -> None:
    marker = b"SECRET-CUSTOMER-DATA-" * 5000
    commit_files(store, "web01", {b"payroll.txt": marker})
    await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
    for p in (tmp_path / "dc").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"SECRET-CUSTOMER" not in data and b"payroll" not in data
            assert b"web01" not in data
            assert store.index.snapshots()[0].snapshot.encode() not in data
            # names are keyed hashes: no chunk id appears
    ids = {c for r in store.index.snapshots()
           for c in store.snapshots.chunk_index(r.host, r.snapshot)}
    names = {p.name for p in (tmp_path / "dc").rglob("*")}
    assert not ids & names


async def test_kill_in_the_middle_resumes_without_resending(store, pool, tmp_path) -> None:
    commit_files(store, "web01", files(12, 2))
    broken = CountingTarget(tmp_path / "dc", fail_after=5)
    rep = replicator(store, broken, pool, concurrency=1)
    with pytest.raises(TargetError):
        await rep.run_pass()
    assert store.index.snapshots()[0].replicated_at is None  # no checkpoint yet
    done = set(broken.puts)
    target = CountingTarget(tmp_path / "dc")
    res = await replicator(store, target, pool).run_pass()
    assert res.snapshots_replicated == 1
    assert not done & set(target.puts)  # nothing finished was sent again
    assert res.objects_skipped == 5


async def test_disaster_recovery_from_the_data_center_alone(store, pool, tmp_path) -> None:
    data = files(4, 3) | {b"empty": b"", b"big": random.Random(4).randbytes(4_000_000)}
    snap = commit_files(store, "web01", data).snapshot
    await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
    store.close()
    import shutil

    shutil.rmtree(tmp_path / "data")  # the appliance burned
    cp, summary = await dc_restore(DirTarget(tmp_path / "dc"), ObjectCipher(KEY), "web01",
                                   "latest", tmp_path / "out", None, pool)
    assert cp["snapshot"] == snap and not summary.errors
    for name, content in data.items():
        assert (tmp_path / "out" / name.decode()).read_bytes() == content
    # A wrong key opens nothing.
    with pytest.raises(Exception, match="no snapshot"):
        await dc_restore(DirTarget(tmp_path / "dc"), ObjectCipher(b"\1" * 32), "web01",
                         "latest", tmp_path / "out2", None, pool)
    store.index = None  # closed above; the fixture's close must not fail
    store.close = lambda: None


async def test_prune_propagates_and_dc_collects_dead_chunks(store, pool, tmp_path) -> None:
    first = commit_files(store, "web01", {b"a": b"A" * 400_000}).snapshot
    second = commit_files(store, "web01", {b"b": b"B" * 400_000}).snapshot
    dc = DirTarget(tmp_path / "dc")
    await replicator(store, dc, pool).run_pass()
    cipher = ObjectCipher(KEY)
    assert [c["snapshot"] for c in await checkpoints(dc, cipher)] == [first, second]
    store.remove_snapshot("web01", first)  # as prune does
    res = await replicator(store, dc, pool).run_pass()
    assert res.snapshots_removed_at_dc == 1 and res.chunks_removed_at_dc >= 1
    assert [c["snapshot"] for c in await checkpoints(dc, cipher)] == [second]
    ok = await dc_verify(store, wiring.replication_state(store), dc, cipher, deep=True)
    assert ok.ok and ok.chunks_checked == ok.chunks_expected


async def test_dc_verify_names_missing_and_damaged_chunks(store, pool, tmp_path) -> None:
    """dc verify compares the recorded chunks with the bucket listing through an on-disk sort
    (runs of 2 here, so several runs are merged): a deleted object is named missing, a
    tampered one bad (deep), and the rest count as checked."""
    commit_files(store, "web01", files(6, seed=41, size=50_000))
    dc = DirTarget(tmp_path / "dc")
    await replicator(store, dc, pool).run_pass()
    cipher = ObjectCipher(KEY)
    ids = list(wiring.replication_state(store).iter_dc_chunk_ids())
    assert len(ids) >= 6
    gone, bad = ids[1], ids[-2]
    (tmp_path / "dc" / chunk_name(cipher, gone)).unlink()
    obj = tmp_path / "dc" / chunk_name(cipher, bad)
    raw = bytearray(obj.read_bytes())
    raw[-1] ^= 1
    obj.write_bytes(bytes(raw))

    res = await dc_verify(store, wiring.replication_state(store), dc, cipher, deep=True,
                          sort_run=2)

    assert res.missing_chunks == [gone] and res.bad_chunks == [bad] and not res.ok
    assert res.chunks_expected == len(ids) and res.chunks_checked == len(ids) - 1
    assert list(store.chunks.tmp.iterdir()) == []


async def test_an_empty_replacement_store_never_wipes_the_dc(pool, tmp_path) -> None:
    old = Datastore(tmp_path / "old", reserve_bytes=0)
    old.add_host("web01")
    commit_files(old, "web01", {b"a": b"keep me" * 1000})
    dc = DirTarget(tmp_path / "dc")
    await replicator(old, dc, pool).run_pass()
    old.close()
    new = Datastore(tmp_path / "new", reserve_bytes=0)
    try:
        res = await replicator(new, dc, pool).run_pass()
        assert res.snapshots_removed_at_dc == 0 and res.chunks_removed_at_dc == 0
        assert len(await checkpoints(dc, ObjectCipher(KEY))) == 1
    finally:
        new.close()


async def test_prune_guard_keeps_unreplicated_snapshots(store, pool, tmp_path) -> None:
    for i in range(3):
        commit_files(store, "web01", {b"f": bytes([i]) * 1000})
    settings = MaintenanceSettings(default_policy="1-0-0", replication_required=True)
    decisions = Maintenance(store, wiring.job_history(store), settings).prune(dry_run=True)
    assert [d.keep for d in decisions] == [True, True, True]
    assert "not replicated" in decisions[0].reason
    await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
    decisions = Maintenance(store, wiring.job_history(store), settings).prune()
    assert [d.keep for d in decisions] == [False, False, True]


async def test_tunnel_down_and_window_pause_replication(store, pool, tmp_path) -> None:
    commit_files(store, "web01", {b"f": b"x" * 1000})
    target = CountingTarget(tmp_path / "dc")
    up = [False]
    rep = replicator(store, target, pool, tunnel_up=lambda: up[0])
    res = await rep.run_pass()
    assert res.paused and "tunnel" in res.paused and target.puts == []
    up[0] = True
    assert (await rep.run_pass()).snapshots_replicated == 1
    now = datetime.now(UTC)
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    res = await replicator(store, target, pool, window=closed, timezone="UTC").run_pass()
    assert res.paused and "window" in res.paused


async def test_link_lost_under_a_pass_when_the_tunnel_goes_is_a_pause(
        store, pool, tmp_path) -> None:
    """Uploads failing because the WAN went away (the tunnel's route gone by the time the
    retries ran out) pause the pass -- `rdr replicate` exits 3, the daemon resumes when the
    tunnel is back -- while the same failure with the tunnel up stays a data-center error."""
    commit_files(store, "web01", files(3, 7))
    up = [True]

    class Unreachable(DirTarget):
        """Every upload times out; with CUT, DPD declares the SA dead meanwhile."""

        def __init__(self, root: Path, cut: bool) -> None:
            super().__init__(root)
            self.cut = cut

        async def put(self, name: str, data: bytes) -> None:
            if self.cut:
                up[0] = False
            raise TargetError("connect timeout (simulated)", transient=True)

    rep = replicator(store, Unreachable(tmp_path / "dc", cut=True), pool,
                     tunnel_up=lambda: up[0])
    res = await rep.run_pass()
    assert res.paused == "the IPsec tunnel to the data center is down"
    assert res.snapshots_replicated == 0 and store.index.snapshots()[0].replicated_at is None
    up[0] = True
    rep = replicator(store, Unreachable(tmp_path / "dc", cut=False), pool,
                     tunnel_up=lambda: up[0])
    with pytest.raises(TargetError):
        await rep.run_pass()
    res = await replicator(store, DirTarget(tmp_path / "dc"), pool,
                           tunnel_up=lambda: up[0]).run_pass()
    assert res.snapshots_replicated == 1 and not res.paused


async def test_one_pass_at_a_time(store, pool, tmp_path) -> None:
    from appliance.store.lock import HeldLock

    commit_files(store, "web01", {b"f": b"x" * 1000})
    held = HeldLock(store.root / "replication.lock", "busy")
    try:
        res = await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
        assert res.paused == "another replication pass is running" and res.queued
    finally:
        held.release()


class GatedTarget(DirTarget):
    """A directory target whose uploads wait at a gate: a pass held mid-way on purpose."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def put(self, name: str, data: bytes) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().put(name, data)


async def test_a_pass_asked_for_while_another_runs_is_queued_and_run(store, pool,
                                                                    tmp_path) -> None:
    """The running pass listed its snapshots before the second commit: without the queued
    follow-up the second snapshot would wait for some later pass; with it, the pass that
    was running runs once more, however many asked meanwhile (coalesced)."""
    commit_files(store, "web01", files(2, 11))
    target = GatedTarget(tmp_path / "dc")
    running = asyncio.create_task(replicator(store, target, pool).run_pass())
    await asyncio.wait_for(target.entered.wait(), 30)
    commit_files(store, "web01", files(2, 12))  # after the running pass listed its work
    asked = [await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
             for _ in range(3)]  # `rdr replicate` without --wait, three times
    assert all(a.queued and a.paused == "another replication pass is running" for a in asked)
    assert wiring.replication_state(store).requests() == 3
    target.gate.set()
    res = await asyncio.wait_for(running, 60)
    assert res.passes == 2 and res.snapshots_replicated == 2 and not res.queued
    assert all(r.replicated_at for r in store.index.snapshots())
    # nobody asked since: one pass, no follow-up
    again = await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
    assert again.passes == 1 and again.snapshots_replicated == 0


async def test_a_request_made_as_the_pass_ends_is_not_lost(store, pool, tmp_path) -> None:
    """The requester finds the lock held, records its request, asks again: the holder has
    released meanwhile, so the requester runs the pass itself."""
    from appliance.store.lock import HeldLock

    commit_files(store, "web01", files(1, 13))
    held = HeldLock(store.root / "replication.lock", "busy")
    rep = replicator(store, DirTarget(tmp_path / "dc"), pool)
    real_request = rep.state.request_pass

    def request_then_release() -> int:
        n = real_request()
        held.release()  # the holder ends exactly between the two attempts
        return n

    rep.state.request_pass = request_then_release  # type: ignore[method-assign]
    res = await rep.run_pass()
    assert not res.queued and res.snapshots_replicated == 1


async def test_cli_replicate_queues_behind_a_running_pass(tmp_path: Path) -> None:
    """`rdr replicate` while a pass runs: exit 4, says a follow-up is queued (not "done")."""
    from appliance.store.lock import HeldLock

    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0\n"
                   f"[replication]\ndirectory = '{tmp_path / 'dc'}'\n")
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("web01")
    commit_files(st, "web01", {b"f": b"x" * 1000})
    held = HeldLock(st.root / "replication.lock", "busy")  # the daemon's pass, say
    try:
        rc, out, err = await run(rdr_cmd() + ["replicate", "--config", str(cfg)])
        assert rc == 4, err
        assert "follow-up pass is queued" in out and "--wait" in out
        rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(cfg)])
        assert rc == 4 and json.loads(out)["queued"] is True
        assert wiring.replication_state(st).requests() == 2
    finally:
        held.release()
    rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(cfg)])
    assert rc == 0 and json.loads(out)["snapshots_replicated"] == 1, err
    st.close()


async def test_self_healing_from_the_data_center(store, pool, tmp_path) -> None:
    commit_files(store, "web01", {b"f": random.Random(5).randbytes(200_000)})
    rep = replicator(store, DirTarget(tmp_path / "dc"), pool)
    await rep.run_pass()
    data_chunk = next(c for c in store.chunks.iter_ids()
                      if store.chunks.size_of(c) > 100_000)
    path = store.chunks.path(data_chunk)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(raw)
    loop = asyncio.get_running_loop()

    def heal(cid: str) -> bytes:
        return asyncio.run_coroutine_threadsafe(rep.fetch_chunk(cid), loop).result()

    m = Maintenance(store, wiring.job_history(store), MaintenanceSettings())
    res = await asyncio.to_thread(m.verify, heal=heal)
    assert res.healed == [data_chunk] and res.ok
    assert store.chunks.read_plain(data_chunk)  # intact again
    assert store.damaged_in("web01", store.index.snapshots()[0].snapshot) == []


async def test_rate_limit_follows_the_time_of_day_schedule(tmp_path) -> None:
    clock = [0.0]
    hour = [9]
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    t = RateLimitedTarget(DirTarget(tmp_path / "dc"), 0, ["08:00-18:00=800"], "UTC",
                          clock=lambda: clock[0],
                          wall=lambda: datetime(2026, 11, 2, hour[0], tzinfo=UTC))
    orig = asyncio.sleep
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for i in range(3):
            await t.put(f"c/{i}", b"x" * 100_000)  # 800 kbit = 0.8 Mbit per 100 kB
        assert sum(slept) == pytest.approx(2.0)  # the first goes at once, then 1 s each
        slept.clear()
        hour[0] = 22  # outside the schedule: the default (unlimited)
        await t.put("c/x", b"x" * 100_000)
        assert slept == []
    finally:
        asyncio.sleep = orig  # type: ignore[assignment]


def test_key_file_and_tamper_detection(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k", create=True)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "k", create=False) == key
    with pytest.raises(ValueError, match="does not exist"):
        load_or_create_key(tmp_path / "missing", create=False)
    c = ObjectCipher(key)
    name = chunk_name(c, "ab" * 32)
    blob = c.seal(name, b"data")
    assert c.open(name, blob) == b"data"
    with pytest.raises(DecryptError):
        c.open(chunk_name(c, "cd" * 32), blob)  # moved to another name
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(DecryptError):
        c.open(name, bytes(bad))


async def test_cli_replicate_status_and_dc_tools(tmp_path: Path) -> None:
    """rdr replicate / replication status / dc snapshots / dc verify / dc restore, on the
    embedded default's kind of target (a local directory) with a generated key."""
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0\n"
                   f"[replication]\ndirectory = '{tmp_path / 'dc'}'\n")
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("web01")
    content = os.urandom(300_000)
    commit_files(st, "web01", {b"report.pdf": content})
    st.close()
    rc, out, err = await run(rdr_cmd() + ["replication", "status", "--json", "--config",
                                          str(cfg)])
    assert rc == 0, err
    assert json.loads(out)["lag"]["snapshots"] == 1
    rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(cfg)])
    assert rc == 0, err
    assert json.loads(out)["snapshots_replicated"] == 1
    key = tmp_path / "data" / "replication.key"
    assert key.stat().st_mode & 0o777 == 0o600
    rc, out, err = await run(rdr_cmd() + ["replication", "status", "--config", str(cfg)])
    assert "lag: 0 snapshots" in out and "web01/" in out
    rc, out, err = await run(rdr_cmd() + ["dc", "verify", "--deep", "--config", str(cfg)])
    assert rc == 0 and "OK" in out, err
    # The data center side, with only the directory and the escrowed key.
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nothing'}'\n")
    args = ["--directory", str(tmp_path / "dc"), "--key-file", str(key), "--config", str(bare)]
    rc, out, err = await run(rdr_cmd() + ["dc", "snapshots", *args])
    assert rc == 0 and "web01" in out, err
    rc, out, err = await run(rdr_cmd() + ["dc", "restore", "--host", "web01", "--to",
                                          str(tmp_path / "out"), *args])
    assert rc == 0, err
    assert (tmp_path / "out" / "report.pdf").read_bytes() == content
    rc, out, err = await run(rdr_cmd() + ["dc", "restore", "--host", "nohost", "--to",
                                          str(tmp_path / "out"), *args])
    assert rc == 1 and "no snapshot" in err and len(err.strip().splitlines()) == 1


async def test_route_check_works_inside_a_running_event_loop() -> None:
    """`rdr replicate` checks the tunnel route from its event loop's thread."""
    from appliance.replication.tunnel import route_present

    assert route_present("127.0.0.0/8", table=255) in (True, False)  # local table
    assert route_present("203.0.113.0/24") is False


async def test_rebuilt_index_remembers_what_was_replicated(store, pool, tmp_path) -> None:
    """The replicated marker lets rebuild-index restore the prune guard's knowledge."""
    from appliance.jobs.maintenance import rebuild as rebuild_index

    commit_files(store, "web01", {b"f": b"x" * 1000})
    await replicator(store, DirTarget(tmp_path / "dc"), pool).run_pass()
    before = store.index.snapshots()[0].replicated_at
    store.close()
    rebuild_index(tmp_path / "data")
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        assert st.index.snapshots()[0].replicated_at == pytest.approx(before)
    finally:
        st.close()
    store.close = lambda: None  # already closed


def test_dc_chunk_ids_page_through_the_whole_table(tmp_path: Path) -> None:
    """The data-center prune streams dc_chunks a page at a time (millions of rows)."""
    from appliance.replication.state import ReplicationState
    from appliance.store.index import Index

    index = Index(tmp_path / "index.sqlite")
    idx = ReplicationState(index)
    try:
        ids = sorted(f"{i:064x}" for i in range(251))
        for cid in ids:
            idx.dc_add(cid, 1)
        assert list(idx.iter_dc_chunk_ids(page=100)) == ids
        got = []
        for cid in idx.iter_dc_chunk_ids(page=7):  # deleting behind the cursor is fine
            got.append(cid)
            idx.dc_remove([cid])
        assert got == ids and list(idx.iter_dc_chunk_ids()) == []
    finally:
        index.close()
