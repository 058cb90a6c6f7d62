"""The LAN page on a snapshot of a million files: how long each click takes.

Builds one snapshot of --files files (default 1,000,000) in --per-dir files per directory,
spread over two directory levels, committed through the public Datastore API like an agent's
(the catalog and directory index cut into ~1 MiB chunks; every file has a real range into a
shared data chunk, so catalog lines are as long as real ones). Then it starts the real daemon
(TLS, SQLite), signs in and times over HTTP, median of --runs:

* open: the first listing of the snapshot (decodes its directory index once);
* list: one directory of --per-dir entries, cold (its catalog chunk not yet decoded) and warm;
* deep: a directory two levels down;
* file: one file's details with the versions across snapshots (one snapshot here);
* search: a name search over the whole catalog, for a name that matches once;
* download: one file's bytes.

Writes benchmarks/results/browse.json. Nothing here needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from appliance.accounts import Accounts
from appliance.config import Config, ReplicationConfig, ServerConfig, StoreConfig
from appliance.daemon import Daemon
from appliance.store.datastore import CommitRequest, Datastore
from rdr_format.catalog import DIR, FILE, CatalogWriter, Entry, Range
from rdr_format.chunkfile import ChunkEncoder
from rdr_format.manifest import StreamRef

RESULTS = Path(__file__).parent / "results"
CUT = 1 << 20


class _Cutter:
    """Cuts a stream into ~1 MiB chunks and stores them in the session as it goes."""

    def __init__(self, store: Datastore, host: str, sid: str, enc: ChunkEncoder) -> None:
        self.store, self.host, self.sid, self.enc = store, host, sid, enc
        self.buf = bytearray()
        self.refs: list[tuple[str, int]] = []

    def write(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= CUT:
            self._emit(bytes(self.buf[:CUT]))
            del self.buf[:CUT]

    def close(self) -> StreamRef:
        if self.buf:
            self._emit(bytes(self.buf))
        return StreamRef(self.refs)

    def _emit(self, plain: bytes) -> None:
        c = self.enc.encode(plain)
        self.store.put_chunk(self.host, self.sid, c.id, c.data)
        self.refs.append((c.id, c.plain_size))


def build(store: Datastore, files: int, per_dir: int) -> tuple[str, bytes, bytes]:
    """Commit the big snapshot; returns (snapshot, a directory path, a file path)."""
    host = "bigfs"
    store.add_host(host)
    sid, _ = store.open_session(host)
    enc = ChunkEncoder()
    data = os.urandom(4 << 20)
    dc = enc.encode(data)
    store.put_chunk(host, sid, dc.id, dc.data)
    cat, idx = _Cutter(store, host, sid, enc), _Cutter(store, host, sid, enc)
    w = CatalogWriter(cat.write, idx.write)
    ndirs = max(1, files // per_dir)
    tops = max(1, int(ndirs ** 0.5))
    subs = (ndirs + tops - 1) // tops
    mtime = 1_700_000_000 * 10**9
    w.add_block(b"", [Entry(b"top%04d" % t, DIR, 0o755, mtime_ns=mtime) for t in range(tops)])
    n = 0
    for t in range(tops):
        top = b"top%04d" % t
        w.add_block(top, [Entry(b"dir%04d" % s, DIR, 0o755, mtime_ns=mtime)
                          for s in range(subs)])
        for s in range(subs):
            entries = []
            for _ in range(per_dir if n < files else 0):
                size = 1000 + (n * 7919) % 50_000
                off = (n * 104_729) % (len(data) - size)
                entries.append(Entry(b"file-%07d.dat" % n, FILE, 0o644, 1000, 1000,
                                     mtime + n, size, [Range(dc.id, off, size, len(data))]))
                n += 1
            w.add_block(top + b"/" + b"dir%04d" % s, entries)
    manifest = store.commit(host, sid, CommitRequest(catalog=cat.close(), dirindex=idx.close()))
    return manifest.snapshot, b"top0000/dir0000", b"top0000/dir0000/file-0000042.dat"


async def timed(http: aiohttp.ClientSession, url: str) -> float:
    t = time.perf_counter()
    async with http.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - t


async def measure(daemon: Daemon, snap: str, dpath: bytes, fpath: bytes, files: int,
                  runs: int) -> dict:
    host, port = daemon.addresses[0]
    base = f"https://{host}:{port}"
    out: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(base + "/api/v1/auth/login",
                             json={"name": "bench", "password": "benchmark password"}) as r:
            assert r.status == 200
        api = f"{base}/api/v1/hosts/bigfs/snapshots/{snap}"
        out["open"] = [await timed(http, f"{api}/dir")]
        deep_dirs = [f"top{t:04d}/dir{s:04d}" for t in range(1, 1 + runs) for s in (3,)]
        out["list_cold"] = [await timed(http, f"{api}/dir?path={d}") for d in deep_dirs]
        out["list_warm"] = [await timed(http, f"{api}/dir?path={deep_dirs[0]}")
                            for _ in range(runs)]
        out["deep_parent"] = [await timed(http, f"{api}/dir?path=top0002") for _ in range(runs)]
        out["file"] = [await timed(http, f"{api}/file?path={fpath.decode()}")
                       for _ in range(runs)]
        last = f"file-{files - 1:07d}"
        out["search"] = [await timed(http, f"{api}/search?q={last}") for _ in range(runs)]
        out["download"] = [await timed(http, f"{api}/download?path={fpath.decode()}")
                           for _ in range(runs)]
        del dpath
    return {k: {"median_ms": round(statistics.median(v) * 1000, 1),
                "max_ms": round(max(v) * 1000, 1), "n": len(v)} for k, v in out.items()}


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rdr-browse-") as tmp:
        data = Path(tmp) / "data"
        cfg = Config(server=ServerConfig(listen=["127.0.0.1:0"]),
                     store=StoreConfig(path=str(data)),
                     replication=ReplicationConfig(enabled=False))
        daemon = Daemon(cfg)
        await daemon.start()
        try:
            assert daemon.store is not None
            t = time.perf_counter()
            snap, dpath, fpath = await asyncio.get_running_loop().run_in_executor(
                None, build, daemon.store, args.files, args.per_dir)
            built = time.perf_counter() - t
            Accounts(daemon.store.index).add("bench", "benchmark password")
            m = daemon.store.snapshots.manifest("bigfs", snap)
            timings = await measure(daemon, snap, dpath, fpath, args.files, args.runs)
        finally:
            await daemon.stop()
    return {"files": args.files, "per_dir": args.per_dir,
            "catalog_bytes": m.catalog.size, "catalog_chunks": len(m.catalog.chunks),
            "dirindex_bytes": m.dirindex.size, "build_seconds": round(built, 1),
            "timings": timings, "machine": {"cpus": os.cpu_count(),
                                            "python": platform.python_version()}}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks browse")
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--per-dir", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "browse.json").write_text(json.dumps(result, indent=1) + "\n")
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0
