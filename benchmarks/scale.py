"""Does the known-chunk lookup still hold at 10 million chunks?

`python -m benchmarks scale [--chunks N] [--batches B] [--work DIR]`

An agent asks the appliance which of a batch of chunk ids it lacks; the appliance answers with
`ChunkStore.touch_missing` (one `utime` per id on `chunks/<4 hex>/<64 hex>`: a path lookup
through a directory of ~150 entries at 10 M chunks, and an inode write), and replication asks
the index which chunks the data center lacks (`ReplicationState.dc_missing` on the `dc_chunks`
table).
The bare lookup (`ChunkStore.missing`, no utime) is timed too, to tell the path walk from the
inode write.
Both are O(batch) by design; this checks that the constant stays small when the store is big
and the caches are cold, and what the process's memory does.

It creates N empty chunk files (the lookup never reads a chunk's bytes, so empty files behave
like real ones) in 65,536 prefix directories with `mknod`, split by prefix across processes so
no two processes contend for one directory; then times batches of 1000 ids (half present, half
absent, random order) through the real `ChunkStore.touch_missing`, cold (page cache, dentries
and inodes dropped, when root) and warm (the same batches again). Then it fills `dc_chunks`
with N rows through the real `ReplicationState` (bulk transactions of 100,000; the per-upload
`dc_add` rate is sampled separately, since it is one fsync'd transaction per chunk), and times
`dc_missing` the same way, and what putting every recorded id in object-name order (what
`rdr dc verify` merges with the bucket listing; sorted on disk) costs in time and memory.
Free inodes and space are checked first.

Last, the commit's final check of a daily backup that reuses most of its parent (up to a
million chunks, 1 % of them new since the parent): the real `Datastore` check, which trusts the
chunks the parent's index vouches for and touches the rest, cold; against touching every chunk
(what it did before), timed cold on a sample of 20,000 and extrapolated.

Writes benchmarks/results/scale.json (scale-<N>.json for other N than the default).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from .tools import drop_caches

RESULTS = Path(__file__).parent / "results"
DEFAULT_WORK = Path(os.environ.get("RDR_BENCH_DIR", "/var/tmp/rdr-bench"))
PREFIXES = 1 << 16
BATCH = 1000
DEFAULT_CHUNKS = 10_000_000


def chunk_id(i: int) -> str:
    """The i-th synthetic chunk id: its 4-hex prefix is i mod 65536 (so a process owning a
    range of prefixes knows its ids without generating everyone's), the rest a hash of i."""
    return f"{i % PREFIXES:04x}" + hashlib.blake2b(i.to_bytes(8, "little"),
                                                   digest_size=30).hexdigest()


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5\n")


def rss() -> dict[str, int]:
    return {"rss_bytes": _status_kib("VmRSS") * 1024, "hwm_bytes": _status_kib("VmHWM") * 1024}


# --- building the store ------------------------------------------------------------------------


def _create_range(root: str, lo: int, hi: int, n: int) -> int:
    """Create every chunk file whose prefix is in [lo, hi) (worker process)."""
    made = 0
    for p in range(lo, min(hi, n)):  # below 65,536 chunks some prefixes stay empty
        d = os.path.join(root, f"{p:04x}")
        os.mkdir(d)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(p, n, PREFIXES):
                os.mknod(chunk_id(i), 0o644 | stat.S_IFREG, dir_fd=dfd)
                made += 1
        finally:
            os.close(dfd)
    return made


def _remove_range(root: str, lo: int, hi: int) -> None:
    for p in range(lo, hi):
        d = os.path.join(root, f"{p:04x}")
        try:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            for name in os.listdir(dfd):
                os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        os.rmdir(d)


def _ranges(workers: int) -> list[tuple[int, int]]:
    step = PREFIXES // workers
    return [(k * step, PREFIXES if k == workers - 1 else (k + 1) * step)
            for k in range(workers)]


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=get_context("fork"))


def build_store(root: Path, n: int, workers: int) -> float:
    t0 = time.perf_counter()
    with _pool(workers) as pool:
        made = sum(pool.map(_create_range, [str(root)] * workers,
                            *zip(*_ranges(workers), strict=True), [n] * workers))
    assert made == n, (made, n)
    os.sync()
    return time.perf_counter() - t0


def remove_store(root: Path, workers: int) -> None:
    if not root.exists():
        return
    with _pool(workers) as pool:
        list(pool.map(_remove_range, [str(root)] * workers,
                      *zip(*_ranges(workers), strict=True)))
    shutil.rmtree(root, ignore_errors=True)


def check_room(work: Path, n: int) -> dict:
    """Refuse, with the figures, when the filesystem cannot take N more inodes and the index:
    filling a shared disk's inode table would break everything else on it."""
    st = os.statvfs(work)
    free_inodes, free_bytes = st.f_favail, st.f_bavail * st.f_frsize
    need_inodes = int(n * 1.02) + PREFIXES + 100_000
    # Directory blocks (~40 B per entry, at least one 4 KiB block per prefix directory),
    # the SQLite table and its primary-key index (~250 B per row), and 1 GiB to spare.
    need_bytes = PREFIXES * 4096 + n * 40 + n * 250 + (1 << 30)
    if st.f_files and free_inodes < need_inodes:
        raise SystemExit(f"scale: {work} has {free_inodes:,} free inodes; {n:,} chunks need "
                         f"{need_inodes:,}. Use --chunks or --work on another filesystem.")
    if free_bytes < need_bytes:
        raise SystemExit(f"scale: {work} has {free_bytes / 2**30:.1f} GiB free; {n:,} chunks "
                         f"need about {need_bytes / 2**30:.1f} GiB. Use --chunks or --work.")
    return {"free_inodes": free_inodes, "free_bytes": free_bytes,
            "needed_inodes": need_inodes, "needed_bytes": need_bytes}


# --- lookups -----------------------------------------------------------------------------------


def batches(n: int, count: int, seed: int) -> list[tuple[list[str], set[str]]]:
    """`count` batches of 1000 ids, half present, half absent, shuffled; with the absent set
    each answer must equal."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        present = [chunk_id(rng.randrange(n)) for _ in range(BATCH // 2)]
        absent = [chunk_id(n + rng.randrange(n)) for _ in range(BATCH // 2)]
        ids = present + absent
        rng.shuffle(ids)
        out.append((ids, set(absent)))
    return out


def time_batches(fn, work: list[tuple[list[str], set[str]]]) -> dict:
    """Run fn on each batch, check its answer, and summarise the timings."""
    times = []
    for ids, absent in work:
        t0 = time.perf_counter()
        missing = fn(ids)
        times.append(time.perf_counter() - t0)
        if set(missing) != absent:
            raise AssertionError(f"lookup answered {len(missing)} missing, expected "
                                 f"{len(absent)}")
    total = sum(times)
    return {"batches": len(times), "lookups_per_second": round(len(times) * BATCH / total),
            "batch_median_ms": round(statistics.median(times) * 1000, 2),
            "batch_max_ms": round(max(times) * 1000, 2),
            "first_batch_ms": round(times[0] * 1000, 2)}


def measure_chunkstore(root: Path, n: int, count: int, seed: int) -> dict:
    """touch_missing cold and warm; then the bare lookup (`ChunkStore.missing`: exists only,
    no utime) on other batches, cold and warm, which tells how much of the cost is the
    inode write. Dirty inodes are synced between passes so one pass's writeback does not
    land in the next one's timing."""
    from appliance.store.chunkstore import ChunkStore

    store = ChunkStore(root)
    work = batches(n, count, seed)
    before = rss()
    _reset_hwm()
    cold_ok = drop_caches()
    cold = time_batches(store.touch_missing, work)
    os.sync()
    warm = time_batches(store.touch_missing, work)
    os.sync()
    after = rss()
    other = batches(n, count, seed + 100)
    drop_caches()
    bare_cold = time_batches(store.missing, other)
    bare_warm = time_batches(store.missing, other)
    # Without root nothing was dropped: the first pass is then only "first", not cold.
    first = "cold" if cold_ok else "first_pass"
    return {first: cold, "warm": warm, "caches_dropped": cold_ok,
            "exists_only": {first: bare_cold, "warm": bare_warm},
            "rss_before": before, "rss_after": after}


def _rows(lo: int, hi: int, now: float) -> list[tuple[str, int, float]]:
    return [(chunk_id(i), 1 << 20, now) for i in range(lo, hi)]


def measure_index(path: Path, n: int, count: int, seed: int) -> dict:
    from appliance.replication.state import ReplicationState
    from appliance.store.index import Index

    index = Index(path)
    idx = ReplicationState(index)
    out: dict = {}
    # The per-upload path: one fsync'd transaction per chunk (sampled; the rows stay).
    sample = min(2000, n)
    t0 = time.perf_counter()
    for i in range(sample):
        idx.dc_add(chunk_id(i), 1 << 20)
    out["dc_add_per_second"] = round(sample / (time.perf_counter() - t0))
    _reset_hwm()
    t0 = time.perf_counter()
    step = 100_000
    now = time.time()
    for lo in range(sample, n, step):
        rows = _rows(lo, min(n, lo + step), now)
        with index.tx() as db:
            db.executemany("INSERT OR REPLACE INTO dc_chunks VALUES (?, ?, ?)", rows)
    out["bulk_insert_seconds"] = round(time.perf_counter() - t0, 2)
    out["bulk_insert_rows_per_second"] = round((n - sample) / max(1e-9, time.perf_counter()
                                                                   - t0))
    with contextlib.closing(sqlite3.connect(path)) as db:  # fold the WAL into the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out["file_bytes"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    out["rss_after_insert"] = rss()
    index.reopen()  # a fresh connection: SQLite's own page cache empty
    work = batches(n, count, seed + 1)
    cold_ok = drop_caches()
    _reset_hwm()
    out["dc_missing_cold" if cold_ok else "dc_missing_first_pass"] = time_batches(
        idx.dc_missing, work)
    out["dc_missing_warm"] = time_batches(idx.dc_missing, work)
    out["rss_after_lookups"] = rss()
    t0 = time.perf_counter()
    n_rows, _ = idx.dc_stats()
    out["dc_stats_seconds"] = round(time.perf_counter() - t0, 3)
    assert n_rows == n, (n_rows, n)
    # `rdr dc verify`: every recorded id as its object name, in name order, sorted on disk.
    from appliance.store.extsort import sorted_lines
    from rdr_format.objects import ObjectCipher

    cipher = ObjectCipher(bytes(32))
    _reset_hwm()
    base = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    names = sorted_lines((f"{cipher.name('chunk', c)} {c}" for c in idx.iter_dc_chunk_ids()),
                         path.parent)
    count, last = 0, ""
    for line in names:
        assert line >= last
        count, last = count + 1, line
    out["dc_verify_sort"] = {"seconds": round(time.perf_counter() - t0, 2), "ids": count,
                             "rss_growth_bytes": _status_kib("VmHWM") * 1024 - base}
    index.close()
    return out


def measure_commit_check(root: Path, n: int, reuse_max: int = 1_000_000) -> dict:
    """A commit reusing `m` chunks of its parent, 1 % of them not in the parent."""
    from appliance.store.datastore import Datastore
    from rdr_format.manifest import Manifest, StreamRef

    m = min(n // 2, reuse_max)
    store = Datastore(root, reserve_bytes=0)  # its chunks/ is the store built above
    try:
        store.add_host("big")
        parent = {chunk_id(i) for i in range(m)}
        now = "2026-11-01T00:00:00+00:00"
        store.snapshots.write(Manifest(
            host="big", snapshot="2026-11-01T00-00-00Z", received_at=now, started_at=now,
            # Stream refs are only recorded here; the check reads chunks.idx alone.
            catalog=StreamRef([(chunk_id(0), 1)]), dirindex=StreamRef([(chunk_id(1), 1)]),
            logical_size=0, file_count=0, dir_count=0, entry_count=0, chunk_count=m,
            new_bytes=0, agent_version="scale", session="scale"), parent)
        store.reconcile()
        fresh = m // 100
        ids = {chunk_id(i) for i in range(fresh, m + fresh)}  # 1 % left, 1 % added
        del parent
        cold_ok = drop_caches()
        t0 = time.perf_counter()
        unvouched = store._unvouched("big", ids)
        missing = store.chunks.touch_missing(unvouched)
        secs = time.perf_counter() - t0
        assert len(unvouched) == fresh and not missing, (len(unvouched), len(missing))
        sample = sorted(ids)[:: max(1, len(ids) // 20_000)]
        drop_caches()
        t0 = time.perf_counter()
        assert not store.chunks.touch_missing(sample)
        per_second = len(sample) / (time.perf_counter() - t0)
    finally:
        store.close()
    return {"reused_chunks": m, "not_in_parent": fresh, "caches_dropped": cold_ok,
            "vouched_check_seconds": round(secs, 2),
            "touch_all": {"sampled": len(sample), "per_second": round(per_second),
                          "extrapolated_seconds": round(m / per_second, 1)}}


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks scale")
    ap.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    ap.add_argument("--batches", type=int, default=50, help="batches of 1000 ids per pass")
    ap.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2),
                    help="processes creating the chunk files")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.chunks < 1000:
        ap.error("--chunks must be at least 1000")
    signal.signal(signal.SIGTERM, _terminate)
    args.work.mkdir(parents=True, exist_ok=True)
    room = check_room(args.work, args.chunks)
    n = args.chunks
    tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=args.work))
    root = tmp / "chunks"
    result: dict = {"chunks": n, "batch": BATCH, "room": room,
                    "machine": {"cpus": os.cpu_count(), "root": os.geteuid() == 0}}
    out = args.out or RESULTS / ("scale.json" if n == DEFAULT_CHUNKS else f"scale-{n}.json")
    try:
        root.mkdir()
        print(f"creating {n:,} chunk files under {root} with {args.workers} processes ...",
              file=sys.stderr, flush=True)
        secs = build_store(root, n, args.workers)
        result["create"] = {"seconds": round(secs, 1), "files_per_second": round(n / secs),
                            "workers": args.workers}
        print(f"  {secs:.1f} s ({n / secs:,.0f} files/s); timing touch_missing ...",
              file=sys.stderr, flush=True)
        result["touch_missing"] = measure_chunkstore(root, n, args.batches, args.seed)
        print("  filling dc_chunks ...", file=sys.stderr, flush=True)
        result["dc_chunks"] = measure_index(tmp / "dc-index.sqlite", n, args.batches,
                                           args.seed)
        print("  timing a big commit's final check ...", file=sys.stderr, flush=True)
        result["commit_check"] = measure_commit_check(tmp, n)
        # Written before the removal, which takes minutes at ten million files.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        print("  removing the store ...", file=sys.stderr, flush=True)
        remove_store(root, args.workers)
        shutil.rmtree(tmp, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0
