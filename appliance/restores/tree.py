"""A committed snapshot as a tree: list a directory, stat a path, walk a subtree, search, read.

Why it is fast on a snapshot of a million files: the directory index maps every directory to
the byte range of its block in the catalog stream, so listing one directory reads one range
(usually one catalog chunk, kept decoded in a shared LRU) and never the rest. A subtree is a
contiguous run of blocks (the catalog is depth-first, sorted), so a folder download reads
exactly that run. Search is the one whole-catalog operation; it skips chunks with no match
using a byte scan before it decodes any JSON.

A directory of a million entries is never decoded whole: its listing pages skip the lines
before the page undecoded, a lookup in it decodes only the lines that can be the name, and a
walk (archive download) decodes one entry at a time. Decoded listings are cached within a
byte budget (an estimate of their size in memory), not a count, so the cache cannot hold
32 million-entry listings (issue 20).

Everything here is blocking and runs in the daemon's heavy pool; nothing imports aiohttp.
"""

from __future__ import annotations

import bisect
import json
import stat
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rdr_format.catalog import (
    DIR,
    FILE,
    HARDLINK,
    BlockStream,
    CatalogError,
    Entry,
    IndexRecord,
    _loads,
    dec_bytes,
    decode_entry,
    enc_bytes,
    indexed_block,
    iter_block_streams,
    iter_index,
    locate,
    path_key,
    split_path,
)
from rdr_format.manifest import Manifest

from ..store.datastore import Datastore
from ..store.errors import NotFound, StoreError
from ..store.index import SnapshotRow

TYPE_NAMES = {"f": "file", "d": "dir", "l": "symlink", "h": "hardlink", "p": "fifo",
              "c": "chardev", "b": "blockdev"}
_HEADER = b'{"d":'
#: Memory of one decoded entry beyond its JSON line, measured (about 370 bytes for a short
#: name): listings are counted against the cache budget with this estimate.
ENTRY_OVERHEAD = 256


def listing_bytes(rec: IndexRecord) -> int:
    """Estimated memory of a directory's decoded listing."""
    return rec.length + rec.count * ENTRY_OVERHEAD


class PlainCache:
    """A byte-budgeted LRU of verified chunk plaintexts, safe to share between threads.

    Catalog chunks are read again and again while someone clicks through a tree; the
    budget keeps a million-file catalog from living in memory whole.
    """

    def __init__(self, read: Callable[[str], bytes], budget: int) -> None:
        self._read = read
        self._budget = budget
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, cid: str, keep: bool = True) -> bytes:
        """The plaintext of `cid`; `keep=False` for one-pass scans (search), which would
        otherwise flush what the people browsing need."""
        with self._lock:
            data = self._lru.get(cid)
            if data is not None:
                self._lru.move_to_end(cid)
                return data
        data = self._read(cid)  # outside the lock: decoding is the slow part
        if not keep:
            return data
        with self._lock:
            if cid not in self._lru and len(data) <= self._budget:
                self._lru[cid] = data
                self._size += len(data)
                while self._size > self._budget:
                    _, old = self._lru.popitem(last=False)
                    self._size -= len(old)
        return data


class DirIndex:
    """The directory index of one snapshot, decoded once into flat arrays: path -> block
    range. About 40 bytes plus the path per directory (a list of records and a dict would
    take about 250), so a catalog of a million directories costs tens of MiB, not hundreds;
    lookups bisect over the index's own order (depth-first, component-wise sorted, as the
    commit checked)."""

    def __init__(self, records: Iterator[IndexRecord], catalog_size: int) -> None:
        self._paths = bytearray()
        self._starts = array("Q")  # where each path starts in _paths (one extra at the end)
        self._offset, self._length, self._count = array("Q"), array("Q"), array("Q")
        last: tuple[bytes, ...] | None = None
        for r in records:
            key = path_key(r.path)
            if last is not None and key <= last:
                raise CatalogError(f"directory index out of order at {r.path!r}")
            last = key
            self._starts.append(len(self._paths))
            self._paths += r.path
            self._offset.append(r.offset)
            self._length.append(r.length)
            self._count.append(r.count)
        self._starts.append(len(self._paths))
        self.catalog_size = catalog_size

    def __len__(self) -> int:
        return len(self._offset)

    @property
    def nbytes(self) -> int:
        """Memory held, for the tree cache's budget."""
        return len(self._paths) + 40 * len(self)

    def _path(self, i: int) -> bytes:
        return bytes(self._paths[self._starts[i]:self._starts[i + 1]])

    def _find(self, path: bytes) -> int | None:
        key = path_key(path)
        i = bisect.bisect_left(range(len(self)), key, key=lambda j: path_key(self._path(j)))
        return i if i < len(self) and self._path(i) == path else None

    def get(self, path: bytes) -> IndexRecord | None:
        i = self._find(path)
        if i is None:
            return None
        return IndexRecord(path, self._offset[i], self._length[i], self._count[i])

    def subtree(self, path: bytes) -> tuple[int, int]:
        """(offset, length) of the run of blocks of `path` and every directory below it."""
        i = self._find(path)
        if i is None:
            raise KeyError(path)
        start = self._offset[i]
        if path == b"":
            return start, self.catalog_size - start
        prefix = path + b"/"
        # the directories below `path` follow it, contiguous: bisect for the first other one
        lo, hi = i + 1, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._path(mid).startswith(prefix):
                lo = mid + 1
            else:
                hi = mid
        end = self._offset[lo] if lo < len(self) else self.catalog_size
        return start, end - start


@dataclass(slots=True)
class Match:
    dir: bytes
    entry: Entry


class SnapshotTree:
    def __init__(self, row: SnapshotRow, manifest: Manifest, dirs: DirIndex,
                 cache: PlainCache, listings: _Listings) -> None:
        self.row = row
        self.manifest = manifest
        self.dirs = dirs
        self._cache = cache
        self._listings = listings

    @property
    def host(self) -> str:
        return self.row.host

    @property
    def snapshot(self) -> str:
        return self.row.snapshot

    def _range(self, offset: int, length: int, keep: bool = True) -> Iterator[memoryview]:
        """The catalog's bytes [offset, offset + length); `keep=False` for one-pass reads of
        large ranges, which would otherwise flush what the people browsing need."""
        for cid, a, b in locate(self.manifest.catalog.chunks, offset, length):
            yield memoryview(self._cache.get(cid, keep))[a:b]

    def _dir(self, path: bytes) -> IndexRecord:
        rec = self.dirs.get(path)
        if rec is None:
            raise NotFound("no_such_directory", f"no directory {_show(path)!r} in this snapshot")
        return rec

    def _small(self, rec: IndexRecord) -> bool:
        """Small enough to decode whole and keep (a quarter of the listing budget at most)."""
        return listing_bytes(rec) <= self._listings.budget // 4

    def listdir(self, path: bytes) -> list[Entry]:
        """The entries of directory `path`, sorted by name bytes (decoded whole: for a huge
        directory use `listdir_page`, `lookup` or `walk`, which stream)."""
        key = (self.host, self.snapshot, path)
        hit = self._listings.get(key)
        if hit is not None:
            return hit
        rec = self._dir(path)
        entries = list(indexed_block([b"".join(self._range(rec.offset, rec.length))],
                                     rec).entries())
        self._listings.put(key, entries, listing_bytes(rec))
        return entries

    def listdir_page(self, path: bytes, offset: int, limit: int) -> tuple[int, list[Entry]]:
        """(entry count, entries [offset, offset + limit)) of directory `path`. A large
        directory is streamed: lines before the page are skipped undecoded, and reading
        stops after the page."""
        rec = self._dir(path)
        if self._small(rec):
            return rec.count, self.listdir(path)[offset:offset + limit]
        out: list[Entry] = []
        block = self._block(rec)
        for n, line in enumerate(block.raw()):
            if n >= offset + limit:
                break
            if n >= offset:
                out.append(decode_entry(_loads(line)))
        return rec.count, out

    def _block(self, rec: IndexRecord) -> BlockStream:
        return indexed_block((bytes(p) for p in self._range(rec.offset, rec.length,
                                                             keep=False)), rec)

    def lookup(self, path: bytes) -> Entry:
        """The catalog entry at `path` (the root is a synthetic directory entry)."""
        split_path(path)
        if path == b"":
            return Entry(name=b"", type=DIR, mode=stat.S_IFDIR | 0o755)
        parent, _, name = path.rpartition(b"/")
        rec = self.dirs.get(parent)
        if rec is not None and not self._small(rec):
            found = self._find(rec, parent, name)
            if found is not None:
                return found
            raise NotFound("no_such_path", f"no {_show(path)!r} in snapshot {self.snapshot}")
        entries = self.listdir(parent) if rec is not None else []
        names = _NameView(entries)
        i = bisect.bisect_left(names, name)
        if i < len(entries) and entries[i].name == name:
            return entries[i]
        raise NotFound("no_such_path", f"no {_show(path)!r} in snapshot {self.snapshot}")

    def _find(self, rec: IndexRecord, parent: bytes, name: bytes) -> Entry | None:
        """`name` in a large directory: only lines holding its encoded form are decoded
        (catalogs are written with compact separators and the name first)."""
        probe = b'{"n":' + json.dumps(enc_bytes(name), separators=(",", ":"),
                                      ensure_ascii=False).encode("utf-8") + b","
        for line in self._block(rec).raw():
            if line.startswith(probe):
                e = decode_entry(_loads(line))
                if e.name == name:
                    return e
        return None

    def data_entry(self, path: bytes, e: Entry) -> Entry:
        """The entry whose ranges hold `e`'s bytes: a hardlink's data lives at its first name."""
        if e.type == HARDLINK and not e.ranges and e.size and e.link is not None:
            return self.lookup(e.link)
        return e

    def walk(self, path: bytes) -> Iterator[tuple[bytes, Iterator[Entry]]]:
        """Blocks of directory `path` and everything below it, in catalog order, each with
        its entries decoded one at a time (consume them before the next block)."""
        self._dir(path)
        offset, length = self.dirs.subtree(path)
        pieces = (bytes(p) for p in self._range(offset, length, keep=length <= 2**20))
        for block in iter_block_streams(pieces):
            yield block.path, block.entries()

    def search(self, needle: str, limit: int) -> tuple[list[Match], bool, int]:
        """Entries whose name contains `needle` (case-insensitive): `search_catalog`."""
        return search_catalog(self.manifest, self._cache, needle, limit)

    def file_pieces(self, e: Entry, start: int, end: int,
                    read: Callable[[str], bytes]) -> Iterator[memoryview]:
        """Bytes [start, end) of regular file `e`, as slices of verified chunk plaintexts."""
        pos = 0
        for r in e.ranges:
            nxt = pos + r.length
            if nxt > start and pos < end:
                a = max(start, pos) - pos
                b = min(end, nxt) - pos
                plain = read(r.chunk)
                if len(plain) < r.offset + r.length:
                    raise CatalogError(f"chunk {r.chunk} is shorter than a file range needs")
                yield memoryview(plain)[r.offset + a:r.offset + b]
            if nxt >= end:
                break
            pos = nxt


class _NameView:
    """Entries seen as their names, for bisect without copying the list."""

    def __init__(self, entries: list[Entry]) -> None:
        self._e = entries

    def __len__(self) -> int:
        return len(self._e)

    def __getitem__(self, i: int) -> bytes:
        return self._e[i].name


class _Listings:
    """Decoded directory listings within a byte budget (a big directory decodes in tens of
    milliseconds; paging through it should not redo that). Sizes are `listing_bytes`
    estimates; a listing over the budget is not kept."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._lru: OrderedDict[tuple, tuple[list[Entry], int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> list[Entry] | None:
        with self._lock:
            hit = self._lru.get(key)
            if hit is None:
                return None
            self._lru.move_to_end(key)
            return hit[0]

    def put(self, key: tuple, entries: list[Entry], size: int) -> None:
        if size > self.budget:
            return
        with self._lock:
            old = self._lru.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._lru[key] = (entries, size)
            self.used += size
            while self.used > self.budget:
                _, (_, gone) = self._lru.popitem(last=False)
                self.used -= gone


def search_catalog(manifest: Manifest, cache: PlainCache, needle: str,
               limit: int) -> tuple[list[Match], bool, int]:
    """Entries whose name contains `needle` (case-insensitive), in catalog order.

    Returns (matches, truncated, entries scanned). A chunk of the catalog whose bytes do
    not contain the needle is skipped after one C-speed scan, so JSON is decoded only
    around candidates and for block headers.
    """
    want = needle.casefold()
    probe = needle.lower().encode("utf-8")
    matches: list[Match] = []
    scanned = 0
    cur = b""
    rest = b""
    for cid, _ in manifest.catalog.chunks:
        piece = cache.get(cid, keep=False)
        buf = rest + piece if rest else piece
        cut = buf.rfind(b"\n") + 1
        body, rest = buf[:cut], buf[cut:]
        if probe not in body.lower():
            headers = body.count(b"\n" + _HEADER) + body.startswith(_HEADER)
            scanned += body.count(b"\n") - headers
            h = body.rfind(b"\n" + _HEADER)
            start = h + 1 if h >= 0 else (0 if body.startswith(_HEADER) else -1)
            if start >= 0:
                cur = _header_path(body[start:body.index(b"\n", start)])
            continue
        for line in body.split(b"\n")[:-1]:
            if line.startswith(_HEADER):
                cur = _header_path(line)
                continue
            scanned += 1
            if probe not in line.lower():
                continue
            e = decode_entry(_loads(line))
            if want in e.name.decode("utf-8", "replace").casefold():
                matches.append(Match(cur, e))
                if len(matches) >= limit:
                    return matches, True, scanned
    return matches, False, scanned


def _header_path(line: bytes) -> bytes:
    head = _loads(line)
    if not isinstance(head, dict) or "d" not in head:
        raise CatalogError("expected a directory block header")
    return dec_bytes(head["d"], "directory path")


def _show(path: bytes) -> str:
    return path.decode("utf-8", "replace") or "/"


class Browser:
    """Snapshot trees for the page, with the caches that make clicking through them fast."""

    def __init__(self, store: Datastore, cache_bytes: int = 64 * 2**20, trees: int = 16,
                 listing_bytes: int = 32 * 2**20) -> None:
        self.store = store
        self.cache = PlainCache(store.chunks.read_plain, cache_bytes)
        self._trees: OrderedDict[tuple[str, str], SnapshotTree] = OrderedDict()
        self._trees_max = trees
        #: The trees' directory indexes share the listings' budget size, separately.
        self._trees_budget = listing_bytes
        self._listings = _Listings(listing_bytes)
        self._lock = threading.Lock()

    def tree(self, host: str, snap: str) -> SnapshotTree:
        row = self.store.resolve_snapshot(host, snap)
        key = (host, row.snapshot)
        with self._lock:
            hit = self._trees.get(key)
            if hit is not None:
                self._trees.move_to_end(key)
                return hit
        manifest = self.store.snapshots.manifest(host, row.snapshot)
        dirs = DirIndex(iter_index(self.cache.get(c, keep=False)
                                   for c, _ in manifest.dirindex.chunks), manifest.catalog.size)
        t = SnapshotTree(row, manifest, dirs, self.cache, self._listings)
        if dirs.nbytes > self._trees_budget:
            return t  # used for this request only
        with self._lock:
            self._trees[key] = t
            while (len(self._trees) > self._trees_max
                   or sum(x.dirs.nbytes for x in self._trees.values()) > self._trees_budget):
                self._trees.popitem(last=False)
        return t

    def search(self, host: str, snap: str, needle: str, limit: int
               ) -> tuple[list[Match], bool, int]:
        """`search_catalog` of one snapshot, reading its manifest and catalog only: a search
        across hundreds of snapshots builds none of their directory indexes."""
        manifest = self.store.snapshots.manifest(host, snap)
        return search_catalog(manifest, self.cache, needle, limit)

    def versions(self, host: str, path: bytes, current: Entry) -> list[dict]:
        """Every snapshot of `host` holding `path`, newest first, and whether its content is
        the same as `current`'s (same chunks, same size)."""
        def content(e: Entry) -> tuple:
            return (e.size, tuple((r.chunk, r.offset, r.length) for r in e.ranges))

        mine = content(current)
        out = []
        for row in reversed(self.store.index.snapshots(host)):
            try:
                t = self.tree(host, row.snapshot)
                e = t.data_entry(path, t.lookup(path))
            except (NotFound, StoreError):
                continue
            out.append({"snapshot": row.snapshot, "received_at": row.to_json()["received_at"],
                        "type": TYPE_NAMES.get(e.type, e.type), "size": e.size,
                        "mtime_ns": e.mtime_ns,
                        "same": e.type in (FILE, HARDLINK) and content(e) == mine})
        return out

