"""Issue 20, finding 2, as the attack: one host's token tries to take the appliance down.

Against a live `rdr serve`, host bench01 (the attacker) commits a catalog of N empty files in
one directory (121 MB, 2 MB on the wire for a million), lists it, commits the same catalog again,
runs 4 archive downloads of that directory at once, and anonymous clients flood the sign-in.
Meanwhile host bench00 (the victim) backs up small data again and again over the agent API,
and /readyz is polled. The test asserts the functional outcomes: the catalog over the host's
entry allowance is refused (422 catalog_too_large) until the host stores data that pays for
it, the repeat commit mints no snapshot, heavy operations beyond the per-host limit are
refused (429 with Retry-After), every victim backup commits, /readyz answers 200 every time,
and the daemon's peak RSS stays under 400 MB. Latencies (p50/p99 of /readyz and of the
victim's requests) are recorded in the output and in RDR_DOS_REPORT (a JSON file) when set;
the one latency assert is a generous bound (10 s), far below the 41 s of timeouts the issue
measured before the fix and far above what a loaded CI machine reaches.
The other tests here check the parts without a daemon (or in-process, deterministically).

N is RDR_DOS_FILES (default 200,000 for CI; the docs' figures are from 1,000,000).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import statistics
import struct
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import requests

from appliance import config, wiring
from appliance.browse.archive import ZipStream
from appliance.browse.tree import DirIndex, PlainCache, SnapshotTree, _Listings
from appliance.config import ConfigError
from appliance.pools import HeavyGate, TooManyRequests
from appliance.store.accounts import Accounts
from appliance.store.datastore import CatalogLimits, Datastore
from appliance.store.errors import NotFound, StoreError, Unavailable
from rdr_format.catalog import (
    DIR,
    FILE,
    HARDLINK,
    CatalogError,
    CatalogTooLarge,
    CatalogWriter,
    Entry,
    IndexRecord,
    Range,
    iter_index,
    path_key,
    validate,
)
from rdr_format.chunkfile import MAX_PLAIN_SIZE, ChunkEncoder
from rdr_format.manifest import StreamRef

from .conftest import Appliance
from .live import Live, start_live
from .test_lifecycle import commit_files
from .test_lifecycle import data as incompressible

N = int(os.environ.get("RDR_DOS_FILES", "200000"))
#: The attacker may commit N // 2 entries for free and one more per 16 bytes it uploaded:
#: its N-file catalog is refused until it stores 8 * N bytes of real data (a test allowance,
#: so the refusal shows at any N; the defaults let a million empty files commit for free).
BYTES_PER_ENTRY = 16
LIMITS = (f"[limits]\ncatalog_free_entries = {N // 2}\n"
          f"catalog_bytes_per_entry = {BYTES_PER_ENTRY}\nheavy_per_principal = 2\n")
RSS_LIMIT = 400 * 2**20
LATENCY_BOUND = 10.0  # seconds; the target is 1 s at p99 (recorded, not asserted)
ARCHIVES = 4
MTIME = 1_700_000_000_000_000_000


class _EmptyFiles(Sequence[Entry]):
    """N empty-file entries made on the fly (the writer needs a length and an iteration)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        raise NotImplementedError  # the writer only iterates

    def __iter__(self) -> Iterator[Entry]:
        for i in range(self.n):
            yield Entry(name=b"f%07d" % i, type=FILE, mode=0o644, mtime_ns=MTIME, ino=i + 10,
                        ctime_ns=MTIME)


def _stream_chunks(data: bytes, enc: ChunkEncoder) -> list[tuple[str, int, bytes]]:
    """A stream cut into chunks of at most 4 MiB: (id, plaintext size, chunk file)."""
    out = []
    for i in range(0, len(data), MAX_PLAIN_SIZE):
        c = enc.encode(data[i:i + MAX_PLAIN_SIZE])
        out.append((c.id, c.plain_size, c.data))
    return out


def build_catalog(n: int, data: list[Range]) -> tuple[bytes, bytes]:
    """Catalog and directory index: `big/` with n empty files, and `data.bin` over `data`."""
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    size = sum(r.length for r in data)
    w.add_block(b"", [Entry(name=b"big", type=DIR, mode=0o755, mtime_ns=MTIME),
                      Entry(name=b"data.bin", type=FILE, mode=0o644, mtime_ns=MTIME,
                            size=size, ranges=data, ino=3, ctime_ns=MTIME)])
    w.add_block(b"big", _EmptyFiles(n))  # type: ignore[arg-type]
    return bytes(cat), bytes(idx)


class Timed:
    """Latencies of one kind of request, thread-safe."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, seconds: float, status: int) -> None:
        with self._lock:
            self.samples.append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict:
        s = sorted(self.samples)
        if not s:
            return {"n": 0}
        return {"n": len(s), "p50_ms": round(statistics.median(s) * 1000, 1),
                "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 1),
                "max_ms": round(s[-1] * 1000, 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


def timed(t: Timed, fn, *args, **kw) -> requests.Response:
    t0 = time.monotonic()
    r = fn(*args, **kw)
    t.add(time.monotonic() - t0, r.status_code)
    return r


def _vm_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


# --- the parts, without a daemon -------------------------------------------------------------


def test_heavy_gate_refuses_beyond_each_principal_and_the_appliance() -> None:
    gate = HeavyGate(per_principal=2, total=4)
    with gate.hold("host:a", "archive"), gate.hold("host:a", "archive"):
        with pytest.raises(TooManyRequests) as refused, gate.hold("host:a", "archive"):
            pass
        assert refused.value.code == "too_many_requests"
        assert refused.value.details["retry_after"] > 0
        # browsing is counted apart from transfers: a downloading host can still list
        with gate.hold("host:a", "listing", "browse"), gate.hold("host:b", "listing"):
            with pytest.raises(Unavailable) as busy, gate.hold("host:c", "listing"):
                pass
            assert busy.value.code == "busy"
    with gate.hold("host:a", "archive"):  # released on exit, errors included
        pass
    assert gate._all == 0 and not gate._running
    assert gate.refused == {"principal": 1, "total": 1}


def _catalog(blocks: list[tuple[bytes, list[Entry]]]) -> tuple[bytes, bytes]:
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    for path, entries in blocks:
        w.add_block(path, entries)
    return bytes(cat), bytes(idx)


def _pieces(data: bytes, n: int = 1000) -> Iterator[bytes]:
    return (data[i:i + n] for i in range(0, len(data), n))


def test_streamed_validation_checks_hardlinks_in_a_second_pass() -> None:
    cid = "ab" * 32
    f = Entry(b"a", FILE, 0o644, size=3, ranges=[Range(cid, 0, 3, 3)])

    def link(to: bytes, name: bytes = b"z") -> Entry:
        return Entry(name, HARDLINK, 0o644, size=3, ranges=[Range(cid, 0, 3, 3)], link=to)

    def check(blocks: list[tuple[bytes, list[Entry]]]) -> None:
        cat, idx = _catalog(blocks)
        validate(_pieces(cat), _pieces(idx), again=lambda: _pieces(cat))

    d = Entry(b"d", DIR, 0o755)
    check([(b"", [f, d]), (b"d", [link(b"a")])])  # an earlier file: fine
    with pytest.raises(CatalogError, match="no earlier file"):  # a later file
        check([(b"", [link(b"d/a", b"c"), d]), (b"d", [f])])
    with pytest.raises(CatalogError, match="no earlier file"):  # earlier, but nothing there
        check([(b"", [f, d]), (b"d", [link(b"b")])])
    with pytest.raises(CatalogError, match="no earlier file"):  # earlier, but a directory
        check([(b"", [f, d]), (b"d", [link(b"d")])])


def test_an_oversized_catalog_is_refused_from_its_header_before_decoding() -> None:
    cat, idx = _catalog([(b"", [Entry(b"big", DIR, 0o755)]), (b"big", _EmptyFiles(50))])
    with pytest.raises(CatalogTooLarge, match="51"):
        validate([cat], [idx], max_entries=50)
    assert validate([cat], [idx], max_entries=51).entries == 51
    # A header claiming a million entries followed by garbage: refused on the header alone.
    lie = b'{"d":"","n":1000000}\n' + b"not json\n" * 3
    with pytest.raises(CatalogTooLarge):
        validate([lie], [b""], max_entries=1000)
    limits = CatalogLimits(free_entries=100, bytes_per_entry=10, max_entries=1000)
    assert [limits.allowed(b) for b in (0, 99, 100, 5000, 10**9)] == [100, 109, 110, 600, 1000]
    # The defaults: a million empty files (and their directory) on a host with no data;
    # ten million files with 512 MB uploaded.
    defaults = wiring.catalog_limits(config.Config())
    assert defaults.allowed(0) >= 1_000_002
    assert defaults.allowed(512 * 10**6) >= 10_000_000 > defaults.allowed(500 * 10**6)


def _tree(n: int, listing_budget: int) -> SnapshotTree:
    """A snapshot tree over a catalog with `big/` of n empty files, read from memory."""
    cat, idx = _catalog([(b"", [Entry(b"big", DIR, 0o755), Entry(b"small", DIR, 0o755)]),
                         (b"big", _EmptyFiles(n)),
                         (b"small", [Entry(b"x\xff", FILE, 0o644)])])
    plain = {f"{i:064x}": cat[i * 65536:(i + 1) * 65536]
             for i in range((len(cat) + 65535) // 65536)}
    manifest = SimpleNamespace(catalog=StreamRef([(c, len(p)) for c, p in plain.items()]))
    row = SimpleNamespace(host="h", snapshot="s")
    dirs = DirIndex(iter_index([idx]), len(cat))
    return SnapshotTree(row, manifest, dirs, PlainCache(plain.__getitem__, 1 << 20),  # type: ignore[arg-type]
                        _Listings(listing_budget))


def test_a_huge_directory_lists_and_looks_up_streamed_within_the_budget() -> None:
    n = 30_000
    tree = _tree(n, listing_budget=1 << 20)
    assert tree.listdir_page(b"big", 0, 3)[0] == n
    assert [e.name for e in tree.listdir_page(b"big", 0, 3)[1]] == [b"f0000000", b"f0000001",
                                                                   b"f0000002"]
    assert [e.name for e in tree.listdir_page(b"big", n - 2, 10)[1]] == [b"f0029998",
                                                                        b"f0029999"]
    assert tree.listdir_page(b"big", n + 5, 10) == (n, [])
    assert tree.lookup(b"big/f0012345").name == b"f0012345"
    with pytest.raises(NotFound):
        tree.lookup(b"big/f9999999")
    assert tree.lookup(b"small/x\xff").name == b"x\xff"  # small: decoded whole and cached
    assert [b for b, _ in tree.walk(b"")] == [b"", b"big", b"small"]
    assert sum(1 for _, es in tree.walk(b"big") for _ in es) == n
    listings = tree._listings
    assert listings.used <= listings.budget and ("h", "s", b"big") not in listings._lru


def test_the_compact_directory_index_finds_directories_and_subtrees() -> None:
    paths = [b"", b"a", b"a/x", b"a/x/y", b"a/x\xff", b"a b", b"a-", b"b"]
    assert paths == sorted(paths, key=path_key)  # the order a commit checks
    recs = [IndexRecord(p, 10 * i, 10, i) for i, p in enumerate(paths)]
    dirs = DirIndex(iter(recs), 10 * len(paths))
    assert [dirs.get(p) for p in paths] == recs
    assert dirs.get(b"a/y") is None and dirs.get(b"c") is None
    assert dirs.subtree(b"") == (0, 80)
    assert dirs.subtree(b"a") == (10, 40)  # a, a/x, a/x/y, a/x\xff; not "a b" or "a-"
    assert dirs.subtree(b"a/x") == (20, 20)  # a/x, a/x/y
    assert dirs.subtree(b"b") == (70, 10)
    with pytest.raises(CatalogError):
        DirIndex(iter([recs[0], recs[2], recs[1]]), 30)
    assert dirs.nbytes < 400


def test_listings_are_kept_within_a_byte_budget() -> None:
    cache = _Listings(1000)
    for i in range(10):
        cache.put(("h", "s", b"%d" % i), [], 300)
    assert cache.used == 900 and len(cache._lru) == 3
    cache.put(("h", "s", b"huge"), [], 5000)  # larger than the budget: not kept
    assert cache.get(("h", "s", b"huge")) is None and cache.used == 900


def test_a_zip_central_directory_spills_to_a_file_and_reads_back(tmp_path: Path) -> None:
    w = ZipStream(str(tmp_path))
    out = bytearray()
    names = [b"d/" + b"n" * 80 + b"%06d" % i for i in range(20_000)]  # about 3 MiB of it
    for name in names:
        out += w.begin_file(name, 1, MTIME, 0o644) + w.file_data(b"x") + w.end_file()
    assert w._central._file is not None  # spilled, not held in memory
    pieces = list(w.finish_pieces())
    assert max(len(p) for p in pieces) <= 1 << 20
    out += b"".join(pieces)
    with zipfile.ZipFile(io.BytesIO(bytes(out))) as z:
        assert [i.filename.encode() for i in z.infolist()] == names
        assert z.read(names[-1].decode()) == b"x"


def test_the_entry_allowance_is_paid_with_uploads_and_repeats_mint_nothing(
        tmp_path: Path) -> None:
    """Store level: a catalog over `free + uploaded / bytes_per_entry` entries is refused
    until the host uploads more; pruning a backup does not take its bytes' allowance away
    (the ledger counts them); an identical commit within the interval returns the earlier
    snapshot, and after it makes a new one."""
    now = [datetime(2026, 3, 2, 18, 0, tzinfo=UTC)]
    store = Datastore(tmp_path / "data", reserve_bytes=0, clock=lambda: now[0],
                      limits=CatalogLimits(free_entries=3, bytes_per_entry=1000,
                                           max_entries=100, recommit_seconds=3600))
    store.add_host("a")
    first = commit_files(store, "a", {b"x": incompressible(1, 6000)})  # about 6.3 kB uploaded
    assert first.new_bytes > 6000
    many = {b"f%02d" % i: b"" for i in range(12)}  # 12 entries: allowance 3 + 6 = 9
    sid, _ = store.open_session("a")
    with pytest.raises(StoreError) as refused:
        commit_files(store, "a", many, sid=sid)
    assert refused.value.code == "catalog_too_large"
    assert "may commit 9" in refused.value.message
    store.remove_snapshot("a", first.snapshot)  # pruned: its bytes still count
    enc = ChunkEncoder()
    extra = enc.encode(incompressible(2, 4000))
    store.put_chunk("a", sid, extra.id, extra.data)  # 4 kB more: allowance 3 + 10 = 13
    now[0] += timedelta(seconds=1)
    made = commit_files(store, "a", many, sid=sid)
    assert made.entry_count == 12
    now[0] += timedelta(minutes=30)
    again = commit_files(store, "a", many)  # same catalog within the hour
    assert again.snapshot == made.snapshot and again.session == made.session
    assert [r.snapshot for r in store.index.snapshots("a")] == [made.snapshot]
    now[0] += timedelta(hours=1)
    later = commit_files(store, "a", many)
    assert later.snapshot != made.snapshot and len(store.index.snapshots("a")) == 2
    store.close()


@pytest.mark.parametrize(("body", "key"), [
    ("heavy_workers = 0", "limits.heavy_workers"),
    ("heavy_per_principal = -1", "limits.heavy_per_principal"),
    ("listing_cache_mb = 0", "limits.listing_cache_mb"),
    ("catalog_bytes_per_entry = 0", "limits.catalog_bytes_per_entry"),
    ("catalog_free_entries = 10\ncatalog_max_entries = 5", "limits.catalog_max_entries"),
    ("recommit_interval_seconds = -1.0", "limits.recommit_interval_seconds"),
    ("heavy_slots = 3", "limits.heavy_slots"),
])
def test_limits_are_validated_by_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[limits]\n{body}\n")
    with pytest.raises(ConfigError, match=key):
        config.load(path)


async def test_light_calls_answer_while_every_heavy_thread_is_held(appliance: Appliance,
                                                                  ) -> None:
    """Deterministic form of "never waits behind heavy work": with every heavy thread
    blocked, probes, token checks, an agent's small calls and a sign-in still answer (password
    hashing has a small pool of its own: a sign-in flood holds neither the light nor the
    heavy workers, and downloads hold no sign-in)."""
    token = appliance.add_host("web01")
    Accounts(appliance.store.index).add("alice", "correct horse battery")
    daemon = appliance.daemon
    release = threading.Event()
    running = threading.Semaphore(0)

    def hold() -> None:
        running.release()
        release.wait(60)

    held = [daemon.pools.heavy.submit(hold) for _ in range(daemon.cfg.limits.heavy_workers)]
    try:
        for _ in held:
            assert running.acquire(timeout=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
            login = asyncio.create_task(http.post(
                appliance.url + "/api/v1/auth/login",
                json={"name": "alice", "password": "correct horse battery"}))
            auth = {"Authorization": f"Bearer {token}"}

            async def call(method: str, path: str, status: int, **kw: object) -> dict:
                async with http.request(method, appliance.url + path, headers=auth,
                                        timeout=aiohttp.ClientTimeout(total=10), **kw) as r:
                    assert r.status == status, await r.text()
                    return await r.json() if r.status != 204 else {}

            await call("GET", "/healthz", 200)
            await call("GET", "/readyz", 200)
            await call("GET", "/api/v1/whoami", 200)
            sid = (await call("POST", "/api/v1/sessions", 201, json={}))["session"]
            await call("POST", f"/api/v1/sessions/{sid}/known", 200, json={"chunks": []})
            await call("POST", f"/api/v1/sessions/{sid}/heartbeat", 204)
            resp = await asyncio.wait_for(login, 30)  # heavy threads still all held
            assert resp.status == 200
            assert not release.is_set()
            resp.release()
    finally:
        release.set()


# --- the attack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    live = start_live(tmp_path_factory.mktemp("dos"), extra_config=LIMITS)
    try:
        yield live
    finally:
        live.app.close()


def upload(s: requests.Session, base: str, sid: str, chunks: list[tuple[str, int, bytes]],
           t: Timed | None = None) -> None:
    for cid, _, data in chunks:
        put = s.put(f"{base}/api/v1/sessions/{sid}/chunks/{cid}", data=data, timeout=120,
                    headers={"Content-Type": "application/octet-stream"}) if t is None else \
            timed(t, s.put, f"{base}/api/v1/sessions/{sid}/chunks/{cid}", data=data,
                  timeout=120, headers={"Content-Type": "application/octet-stream"})
        assert put.status_code in (200, 201), put.text


def commit_body(cat: list, idx: list, source: str) -> dict:
    return {"catalog": {"chunks": [[c, n] for c, n, _ in cat]},
            "dirindex": {"chunks": [[c, n] for c, n, _ in idx]},
            "agent_version": "dos-test", "source": [source]}


class Victim(threading.Thread):
    """Host bench00 backing up one new small file again and again over the agent API."""

    def __init__(self, live: Live, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.live, self.stop_ev = live, stop
        self.requests = Timed()
        self.backups: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        s = self.live.http(self.live.tokens[0])
        base, enc, rng = self.live.base, ChunkEncoder(), random.Random(7)
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            try:
                plain = rng.randbytes(64 * 1024)
                c = enc.encode(plain)
                cat, idx = bytearray(), bytearray()
                CatalogWriter(cat.extend, idx.extend).add_block(b"", [Entry(
                    name=b"small.bin", type=FILE, mode=0o644, mtime_ns=MTIME, size=len(plain),
                    ranges=[Range(c.id, 0, len(plain), len(plain))], ino=5, ctime_ns=MTIME)])
                cat_c, idx_c = _stream_chunks(bytes(cat), enc), _stream_chunks(bytes(idx), enc)
                r = timed(self.requests, s.post, base + "/api/v1/sessions", json={}, timeout=60)
                if r.status_code != 201:
                    self.failures.append(f"open: {r.status_code} {r.text[:200]}")
                    time.sleep(1)
                    continue
                sid = r.json()["session"]
                ids = [c.id] + [x for x, _, _ in cat_c + idx_c]
                r = timed(self.requests, s.post, f"{base}/api/v1/sessions/{sid}/known",
                          json={"chunks": ids}, timeout=60)
                missing = set(r.json()["missing"])
                upload(s, base, sid, [x for x in [(c.id, c.plain_size, c.data), *cat_c, *idx_c]
                                      if x[0] in missing], self.requests)
                r = timed(self.requests, s.post, f"{base}/api/v1/sessions/{sid}/commit",
                          json=commit_body(cat_c, idx_c, "/victim"), timeout=60)
                if r.status_code != 201:
                    self.failures.append(f"commit: {r.status_code} {r.text[:200]}")
                    continue
                self.backups.append(time.monotonic() - t0)
            except requests.RequestException as exc:
                self.failures.append(f"request failed: {exc}")
            self.stop_ev.wait(0.2)


class Prober(threading.Thread):
    """/readyz every 100 ms, as a load balancer or the watchdog would."""

    def __init__(self, live: Live, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.live, self.stop_ev = live, stop
        self.readyz = Timed()
        self.errors: list[str] = []

    def run(self) -> None:
        s = self.live.http()
        while not self.stop_ev.is_set():
            try:
                timed(self.readyz, s.get, self.live.base + "/readyz", timeout=60)
            except requests.RequestException as exc:
                self.errors.append(str(exc))
            self.stop_ev.wait(0.1)


def _zip_entries(tail: bytes) -> int:
    """Entry count from the end records of a zip (zip64 when present)."""
    at = tail.rfind(b"PK\x06\x06")
    if at >= 0:
        return struct.unpack_from("<Q", tail, at + 32)[0]
    at = tail.rfind(b"PK\x05\x06")
    assert at >= 0, "no end of central directory"
    return struct.unpack_from("<H", tail, at + 10)[0]


def archive_download(live: Live, snap: str, out: dict, lock: threading.Lock) -> None:
    """One archive download of big/, retried after Retry-After while refused (429/503)."""
    s = live.http(live.tokens[1])
    url = f"{live.base}/api/v1/hosts/bench01/snapshots/{snap}/archive?path=big&format=zip"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        with s.get(url, stream=True, timeout=600) as r:
            if r.status_code in (429, 503):
                body = r.json()
                with lock:
                    out["refused"].append({"status": r.status_code, "error": body.get("error"),
                                           "retry_after": r.headers.get("Retry-After")})
                time.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))
                continue
            assert r.status_code == 200, r.text[:300]
            total, tail = 0, b""
            for piece in r.iter_content(1 << 20):
                total += len(piece)
                tail = (tail + piece)[-4096:]
        with lock:
            out["done"].append({"bytes": total, "entries": _zip_entries(tail),
                                "seconds": round(time.monotonic() - t0, 1)})
        return
    raise AssertionError("an archive download never got its turn")


def sign_in_flood(live: Live, stop: threading.Event, out: Timed) -> None:
    s = live.http()
    n = 0
    while not stop.is_set():
        n += 1
        try:
            timed(out, s.post, live.base + "/api/v1/auth/login", timeout=60,
                  json={"name": f"nobody{n % 50}", "password": "wrong"})
        except requests.RequestException:
            out.add(60.0, 0)


def test_one_host_cannot_starve_the_appliance(live: Live, tmp_path: Path) -> None:
    pid = live.app.server.pid  # type: ignore[union-attr]
    base, enc = live.base, ChunkEncoder()
    attacker = live.http(live.tokens[1])
    report: dict = {"files": N, "load_before": os.getloadavg()}
    hwm: dict[str, int] = {}  # the daemon's peak RSS (MiB) after each step
    report["peak_rss_mb_after_step"] = hwm
    stop = threading.Event()
    victim, prober = Victim(live, stop), Prober(live, stop)
    rss_base = _vm_kib(pid, "VmRSS") * 1024
    victim.start()
    prober.start()
    try:
        # 1. The data the attacker will need, and its catalog: N empty files in big/.
        need = (N - N // 2) * BYTES_PER_ENTRY + MAX_PLAIN_SIZE
        rng = random.Random(1)
        data_chunks, ranges = [], []
        while sum(n for _, n, _ in data_chunks) < need:
            c = enc.encode(rng.randbytes(MAX_PLAIN_SIZE))
            data_chunks.append((c.id, c.plain_size, c.data))
            ranges.append(Range(c.id, 0, c.plain_size, c.plain_size))
        t0 = time.monotonic()
        cat_bytes, idx_bytes = build_catalog(N, ranges)
        cat, idx = _stream_chunks(cat_bytes, enc), _stream_chunks(idx_bytes, enc)
        report["catalog_bytes"] = len(cat_bytes)
        report["catalog_wire_bytes"] = sum(len(d) for _, _, d in cat + idx)
        report["catalog_build_s"] = round(time.monotonic() - t0, 1)
        del cat_bytes, idx_bytes

        # 2. The catalog alone is over the host's allowance: refused, the session stays open.
        sid = attacker.post(base + "/api/v1/sessions", json={}, timeout=60).json()["session"]
        upload(attacker, base, sid, cat + idx)
        body = commit_body(cat, idx, "/attack")
        t0 = time.monotonic()
        r = attacker.post(f"{base}/api/v1/sessions/{sid}/commit", json=body, timeout=600)
        report["refused_commit_s"] = round(time.monotonic() - t0, 2)
        assert r.status_code == 422, r.text[:300]
        assert r.json()["error"] == "catalog_too_large", r.text[:300]
        report["refused_commit_message"] = r.json()["message"]
        hwm["before commit"] = _vm_kib(pid, "VmHWM") // 1024

        # 3. With the data uploaded (8 bytes per entry over the free half), it commits.
        upload(attacker, base, sid, data_chunks)
        t0 = time.monotonic()
        r = attacker.post(f"{base}/api/v1/sessions/{sid}/commit", json=body, timeout=900)
        report["commit_s"] = round(time.monotonic() - t0, 1)
        assert r.status_code == 201, r.text[:300]
        snap = r.json()["snapshot"]
        assert r.json()["file_count"] == N + 1
        hwm["commit"] = _vm_kib(pid, "VmHWM") // 1024

        # 4. Listing the huge directory: first page and the last one, streamed.
        pages = Timed()
        url = f"{base}/api/v1/hosts/bench01/snapshots/{snap}/dir"
        for offset in (0, N - 10, 0):
            r = timed(pages, attacker.get, url, params={"path": "big", "offset": offset,
                                                      "limit": 1000}, timeout=300)
            assert r.status_code == 200, r.text[:300]
            assert r.json()["total"] == N
            assert len(r.json()["entries"]) == min(1000, N - offset)
        assert r.json()["entries"][0]["name"] == "f0000000"
        report["listing"] = pages.summary()
        hwm["listing"] = _vm_kib(pid, "VmHWM") // 1024

        # 5. The same catalog committed again at once: no new snapshot.
        before = attacker.get(base + "/api/v1/snapshots", timeout=60).json()["snapshots"]
        sid2 = attacker.post(base + "/api/v1/sessions", json={}, timeout=60).json()["session"]
        t0 = time.monotonic()
        r = attacker.post(f"{base}/api/v1/sessions/{sid2}/commit", json=body, timeout=600)
        report["repeat_commit_s"] = round(time.monotonic() - t0, 2)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["repeated"] is True and r.json()["snapshot"] == snap
        after = attacker.get(base + "/api/v1/snapshots", timeout=60).json()["snapshots"]
        assert len(after) == len(before)
        hwm["repeat commit"] = _vm_kib(pid, "VmHWM") // 1024

        # 6. Four archive downloads of big/ at once, and an anonymous sign-in flood.
        archives: dict = {"done": [], "refused": []}
        lock = threading.Lock()
        flood, flood_stop = Timed(), threading.Event()
        flooders = [threading.Thread(target=sign_in_flood, args=(live, flood_stop, flood),
                                     daemon=True) for _ in range(4)]
        for f in flooders:
            f.start()
        t0 = time.monotonic()
        errors: list[BaseException] = []

        def download() -> None:
            try:
                archive_download(live, snap, archives, lock)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        downloads = [threading.Thread(target=download, daemon=True) for _ in range(ARCHIVES)]
        for d in downloads:
            d.start()
        time.sleep(2)  # two downloads run, two wait: browsing is counted apart
        r = timed(pages, attacker.get, url, params={"path": "big", "limit": 10}, timeout=300)
        assert r.status_code == 200, r.text[:300]
        report["listing_while_downloading_ms"] = round(pages.samples[-1] * 1000, 1)
        for d in downloads:
            d.join()
        report["archives_s"] = round(time.monotonic() - t0, 1)
        hwm["archives and sign-in flood"] = _vm_kib(pid, "VmHWM") // 1024
        flood_stop.set()
        for f in flooders:
            f.join()
        assert not errors, errors
        report["archives"] = {"done": archives["done"], "refused": len(archives["refused"]),
                              "refusals_seen": archives["refused"][:3]}
        report["sign_in_flood"] = flood.summary()
    finally:
        stop.set()
        victim.join()
        prober.join()
    report["load_after"] = os.getloadavg()
    report["rss_before_mb"] = round(rss_base / 2**20)
    report["peak_rss_mb"] = round(_vm_kib(pid, "VmHWM") / 1024)
    report["readyz"] = prober.readyz.summary()
    report["victim_requests"] = victim.requests.summary()
    report["victim_backups"] = {"n": len(victim.backups),
                                "p50_s": round(statistics.median(victim.backups), 2)
                                if victim.backups else None,
                                "max_s": round(max(victim.backups), 2) if victim.backups
                                else None, "failures": victim.failures[:5]}
    print(json.dumps(report, indent=1))
    if os.environ.get("RDR_DOS_REPORT"):
        Path(os.environ["RDR_DOS_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")

    # Heavy operations beyond the per-host limit were refused, with Retry-After and JSON.
    assert len(archives["done"]) == ARCHIVES
    assert all(a["entries"] == N + 1 for a in archives["done"]), archives["done"]
    assert archives["refused"], "no archive download was refused: the limit did not hold"
    assert all(x["status"] == 429 and x["error"] == "too_many_requests" and x["retry_after"]
               for x in archives["refused"]), archives["refused"][:3]
    # The sign-in flood was answered (refused), never with a server error.
    assert flood.samples and set(flood.statuses) <= {401, 429}, flood.statuses
    # The other host backed up all along, and the appliance stayed ready.
    assert victim.backups and not victim.failures, victim.failures[:5]
    assert prober.readyz.samples and set(prober.readyz.statuses) == {200}, (
        prober.readyz.statuses, prober.errors[:3])
    assert not prober.errors, prober.errors[:3]
    assert max(prober.readyz.samples) < LATENCY_BOUND, report["readyz"]
    assert max(victim.requests.samples) < LATENCY_BOUND, report["victim_requests"]
    assert _vm_kib(pid, "VmHWM") * 1024 < RSS_LIMIT, report["peak_rss_mb"]
