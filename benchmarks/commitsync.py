"""What does a commit's sync wait for, with and without starting each chunk's write-out early?

`python -m benchmarks commitsync [--mb N] [--rate MBPS] [--runs N] [--work DIR]`

A commit makes every chunk of its snapshot durable with one `syncfs` before it publishes the
manifest. Chunk files are written without fsync; left alone, the page cache holds them until
its own writeback timer (about 30 s) or that sync, so the agent waits at the end of every
backup for the whole upload to reach the disk. `ChunkStore(writeback=True)` starts each
chunk's write-out as it lands (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), which leaves the
sync only what landed in the last moments.

Both modes put the same N MiB of incompressible chunk files (about 1 MiB each, as the agent's
FastCDC cuts them), through the real `ChunkStore.put` on two threads (the daemon's pool), paced
at RATE MB/s (roughly what an agent uploads on this machine; 0 = as fast as possible), then
time `ChunkStore.sync()`. Runs alternate the modes; each starts on an empty store, after the
previous one is removed and synced away. Writes benchmarks/results/commitsync.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance.store.chunkstore import ChunkStore
from rdr_format.chunkfile import ChunkEncoder
from rdr_format.fsutil import syncfs

RESULTS = Path(__file__).parent / "results"
DEFAULT_WORK = Path(os.environ.get("RDR_BENCH_DIR", "/var/tmp/rdr-bench"))
CHUNK = 1024 * 1024


def make_chunks(mb: int) -> list[tuple[str, bytes]]:
    """N distinct encoded chunk files of random (incompressible) content."""
    enc = ChunkEncoder()
    out = []
    for _ in range(mb):
        c = enc.encode(os.urandom(CHUNK))
        out.append((c.id, bytes(c.data)))
    return out


def one_run(work: Path, chunks: list[tuple[str, bytes]], writeback: bool,
            rate: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="commitsync-", dir=work))
    try:
        store = ChunkStore(root / "chunks", writeback=writeback)
        start = time.monotonic()
        per_chunk = (CHUNK / (rate * 1e6)) if rate > 0 else 0.0

        def put(i: int) -> None:
            due = start + i * per_chunk
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cid, data = chunks[i]
            store.put(cid, data)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(put, range(len(chunks))))
        put_s = time.monotonic() - start
        t = time.monotonic()
        store.sync()
        sync_s = time.monotonic() - t
        return {"writeback": writeback, "put_s": round(put_s, 3), "sync_s": round(sync_s, 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        syncfs(work)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks commitsync",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="MiB of chunks per run (default 1024)")
    ap.add_argument("--rate", type=float, default=150.0,
                    help="upload pace in MB/s (default 150; 0 = unpaced)")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"directory on the disk to measure (default {DEFAULT_WORK})")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"encoding {args.mb} MiB of chunks ...", file=sys.stderr)
    chunks = make_chunks(args.mb)
    runs: list[dict] = []
    for i in range(args.runs):
        for mode in ((True, False) if i % 2 == 0 else (False, True)):
            r = one_run(args.work, chunks, mode, args.rate)
            print(f"  writeback={'on ' if mode else 'off'} put {r['put_s']:6.2f} s  "
                  f"sync {r['sync_s']:6.2f} s", file=sys.stderr)
            runs.append(r)
    summary = {}
    for mode, name in ((True, "writeback"), (False, "no_writeback")):
        rs = [r for r in runs if r["writeback"] is mode]
        summary[name] = {"put_s_median": statistics.median(r["put_s"] for r in rs),
                         "sync_s_median": statistics.median(r["sync_s"] for r in rs)}
    result = {"mb": args.mb, "rate_mb_s": args.rate, "runs": runs, "median": summary,
              "work": str(args.work)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "commitsync.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, s in summary.items():
        print(f"{name:13s} put {s['put_s_median']:6.2f} s  commit sync {s['sync_s_median']:6.2f} s"
              " (median)")
    return 0
