"""The backup pipeline: walk, chunk, deduplicate, upload, commit.

Shape: one producer thread walks the tree in catalog order, merges it with the parent
snapshot's catalog (an unchanged file -- same size, mtime, ctime, inode -- keeps its ranges
without being read), reads changed files (large ones through FastCDC, small ones into bundles)
and writes catalog blocks as soon as their chunks are hashed. A pool of encoder threads hashes
and compresses chunks in parallel and hands them to the event loop, where the uploader asks the
appliance in batches which chunks it lacks and uploads those, several at a time. Queues are
bounded everywhere, so memory stays flat and a slow LAN slows reading rather than filling RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import random
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rdr_agent import bundle_use, compat, latest
from rdr_agent.bundle_use import ChunkUse, low_use_bundles
from rdr_agent.catalog_cache import CatalogCache
from rdr_agent.catalog_names import CatalogNamer
from rdr_agent.chunker import (
    CATALOG_CDC,
    SMALL_FILE,
    Bundle,
    Slab,
    SlabPool,
    StreamCutter,
    cut_stream,
    new_cdc,
)
from rdr_agent.client import ApplianceClient, ApplianceError
from rdr_agent.holes import SparseReader, is_sparse
from rdr_agent.smallreads import DirReads, SmallRead, hint_files, open_for_read, xattrs_of
from rdr_agent.statefiles import private_dir, write_private
from rdr_agent.uploader import Cancelled, ChunkUploader, LazyChunk
from rdr_agent.walker import READ_AHEAD_THREADS, Child, Walker
from rdr_format import __version__
from rdr_format import sources as sources_rule
from rdr_format.catalog import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    CatalogWriter,
    Entry,
    Range,
    decode_validated_line,
    iter_blocks,
    iter_raw_blocks,
    join_path,
    path_key,
)
from rdr_format.chunkfile import (
    ChunkEncoder,
    EncodedChunk,
    chunk_id,
    possession_key,
    possession_proof,
)
from rdr_format.compat import SLOTS
from rdr_format.compression import Tally
from rdr_format.workers import WorkerPool

log = logging.getLogger("rdr.agent.backup")

#: Backup passes in one session: a commit refused for unproven chunks (an unchanged file's
#: range whose snapshot was force-pruned meanwhile) re-reads the files that use them, and
#: the last pass reads everything.
MAX_PASSES = 3
_NO_PARENT: tuple[None, None] = (None, None)
_FILE_TYPES = (FILE, HARDLINK)
WARM_MAX = 8 * 2**20  # bigger files are read sequentially with the kernel's own readahead
MAX_UNREADABLE_SENT = 1000
#: A file read less than this after its last change is recorded with no ctime, so the next
#: backup reads it again whatever its stat says. Why: timestamps move in ticks (1-10 ms on
#: Linux), so a file read in the tick of its last change and changed again within that tick
#: would keep its size, mtime and ctime -- and its new bytes would never be backed up
#: ("racy" entries, as git calls them). A ctime of whole seconds is taken to come from a
#: filesystem that keeps seconds (ext4 with small inodes, FAT's two): RACY_COARSE_NS then.
RACY_NS = 20 * 10**6
RACY_COARSE_NS = 2 * 10**9


def is_racy(ctime_ns: int, seen_ns: int) -> bool:
    """Whether a file seen (stat, then read) at `seen_ns` may change again unseen: its
    last change is less than a timestamp tick older (RACY_NS, RACY_COARSE_NS)."""
    margin = RACY_COARSE_NS if ctime_ns % 10**9 == 0 else RACY_NS
    return seen_ns - ctime_ns < margin


@dataclass(**SLOTS)
class BackupStats:
    """Counters shared by the producer thread, the encoders and the uploader (GIL-atomic
    increments are enough for progress figures)."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    other: int = 0  # fifos and device nodes
    files_read: int = 0
    files_unchanged: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_unchanged: int = 0
    chunks_new: int = 0
    bytes_new: int = 0
    chunks_known: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    excluded: int = 0


@dataclass(**SLOTS)
class BackupResult:
    snapshot: str
    host: str
    stats: BackupStats
    duration: float
    resumed: bool

    def to_json(self) -> dict:
        s = self.stats
        return {"snapshot": self.snapshot, "host": self.host, "files": s.files, "dirs": s.dirs,
                "symlinks": s.symlinks, "other": s.other, "files_read": s.files_read,
                "files_unchanged": s.files_unchanged, "bytes_total": s.bytes_total,
                "bytes_read": s.bytes_read, "bytes_new": s.bytes_new,
                "chunks_new": s.chunks_new, "chunks_known": s.chunks_known,
                "excluded": s.excluded, "duration_seconds": round(self.duration, 3),
                "resumed_session": self.resumed,
                "unreadable": [{"path": p, "error": e} for p, e in s.unreadable]}


# --- parent snapshot -------------------------------------------------------------------------


class ParentCatalog:
    """The parent snapshot's catalog, read forward in step with the walk: each block decoded,
    and its entry lines kept, so an unchanged file's line is written again as it was.

    Its lines are read without re-checking each field (`decode_validated_line`): the
    appliance checked them at that snapshot's commit, the cache checked their bytes against
    the chunk ids, a name only ever meets the walk's own names here, and what is reused goes
    into a catalog the appliance checks again."""

    def __init__(self, blocks: Iterator[tuple[bytes, list[bytes]]] | None) -> None:
        self._it = blocks
        self._cur: tuple[bytes, list[bytes]] | None = None
        self._advance()

    def _advance(self) -> None:
        self._cur = next(self._it, None) if self._it is not None else None

    def lookup(self, path: bytes) -> dict[bytes, tuple[Entry, bytes]]:
        """The parent's entries of directory `path` by name, each with its catalog line."""
        key = path_key(path)
        while self._cur is not None and path_key(self._cur[0]) < key:
            self._advance()
        if self._cur is not None and self._cur[0] == path:
            lines = self._cur[1]
            entries = {e.name: (e, line) for e, line in zip(map(decode_validated_line, lines),
                                                                 lines)}
            self._advance()
            return entries
        return {}


# --- producer --------------------------------------------------------------------------------


#: A file's (device, inode).
_Inode = tuple[int, int]


class _Pending:
    """A range whose chunk id is not known yet: a chunk being encoded, or an open bundle."""

    __slots__ = ("length", "offset", "size", "src")

    def __init__(self, src: Future | Bundle, offset: int, length: int, size: int) -> None:
        self.src, self.offset, self.length, self.size = src, offset, length, size


@dataclass(frozen=True, **SLOTS)
class ChunkRef:
    """What a catalog range needs of an encoded chunk. A `lazy` one (a chunk of a large file
    the parent held, compressed only if the appliance lacks it) has no stored size here: the
    uploader adds what it sends to the compression tally itself."""

    id: str
    plain_size: int
    stored_size: int = 0
    lazy: bool = False


class ThreadEncoders:
    """One ChunkEncoder per thread of the encoders' pool (its zstd context is reused), for
    the producer's jobs and the uploader's compression of lazy chunks alike."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> ChunkEncoder:
        enc = getattr(self._local, "enc", None)
        if enc is None:
            enc = self._local.enc = ChunkEncoder()
        return enc

    def pack(self, chunk: LazyChunk) -> EncodedChunk:
        return self.get().pack(chunk.id, chunk.data)


class Producer:
    """Runs in one thread: walk, read, chunk, write the catalog. Chunks go out via `emit`."""

    MAX_PENDING_BLOCKS = 512
    MAX_ENCODES_IN_FLIGHT = 4

    def __init__(self, stats: BackupStats,
                 emit: Callable[[EncodedChunk | LazyChunk, str], None],
                 encoders: ThreadPoolExecutor, parent: ParentCatalog, low_use: set[str],
                 stop: threading.Event, prefetch: Executor | None = None,
                 proof_key: bytes | None = None, codecs: ThreadEncoders | None = None,
                 compression: Tally | None = None,
                 on_catalog_piece: Callable[[Future], None] | None = None) -> None:
        """`emit(chunk, proof)` gets every chunk with its possession proof under
        `proof_key` (the session's; "" without one): the chunks of a large file the parent
        snapshot held as LazyChunk (compressed only if sent), the rest compressed.
        `on_catalog_piece` gets each catalog piece's future, in order, as it is cut."""
        self.on_catalog_piece = on_catalog_piece
        self.stats = stats
        self.emit = emit
        self.proof_key = proof_key
        self.encoders = encoders
        self.parent = parent
        self.low_use = low_use
        self.stop = stop
        self.prefetch = prefetch
        self._ahead: DirReads | None = None  # the small files of the directory being walked
        self._codecs = codecs or ThreadEncoders()
        self._slots = threading.Semaphore(self.MAX_ENCODES_IN_FLIGHT)
        self._bundle = Bundle()
        # Blocks waiting for their chunk ids: (path, entries, reused catalog lines, file
        # ranges, further names of hard-linked files with their inode keys, the first names
        # with theirs).
        self._pending: deque[tuple[bytes, list[Entry], list[bytes | None],
                                   list[tuple[Entry, list]], list[tuple[Entry, _Inode]],
                                   list[tuple[_Inode, Entry]]]] = deque()
        # Hard-linked files by (device, inode), to the end of the backup: the first name's
        # catalog path (from the walk), and its size and ranges as (chunk, offset, length,
        # chunk size) once its block is written. A further name's block is written after
        # its first's or with it, so its data is there by then. Kept as entries, a tree
        # whose every file has two names (rsnapshot's, the benchmark's working copy) held
        # four objects per file for the garbage collector to walk: 1.2 million at 300,000
        # files, 3.8 s of collections in a 15 s backup (`python -m benchmarks agentgc`).
        # The collector does not track bytes, and stops tracking tuples of strings and
        # numbers.
        self._link_paths: dict[_Inode, bytes] = {}
        self._link_data: dict[_Inode, tuple[int, tuple[tuple[str, int, int, int], ...]]] = {}
        self._cdc = new_cdc()
        self._slabs = SlabPool()
        self.catalog_futures: list[Future] = []
        self.index_futures: list[Future] = []
        self._cat_cut = StreamCutter(CATALOG_CDC)
        self._idx_cut = StreamCutter()
        self._writer = CatalogWriter(self._cat_sink, self._idx_sink)
        #: What the new catalog's files use of each chunk (saved for the next backup).
        self.use = ChunkUse()
        #: How compressible the files read were, per class (sent with the commit).
        self.compression = compression or Tally()

    # --- encoding ---
    def _encode_job(self, plain: bytes | bytearray | memoryview, keep: bool,
                    slab: Slab | None, lazy: bytes | None) -> EncodedChunk | ChunkRef:
        try:
            # The plaintext is at hand (and in cache) now: the proof costs one hash pass.
            key = self.proof_key
            if lazy is not None:  # hashed now, compressed by the uploader if it is sent
                cid = chunk_id(plain)
                self.emit(LazyChunk(cid, bytes(plain), lazy),
                          possession_proof(key, plain) if key is not None else "")
                return ChunkRef(cid, len(plain), lazy=True)
            chunk = self._codecs.get().encode(plain)
            self.emit(chunk, possession_proof(key, plain) if key is not None else "")
            # A data chunk's future lives as long as the catalog block that needs its id,
            # which can be hundreds of blocks behind a bundle still filling: it keeps the
            # id only, so the chunk's bytes are freed once uploaded.
            return chunk if keep else ChunkRef(chunk.id, chunk.plain_size, len(chunk.data))
        finally:
            if slab is not None:  # the plaintext was a view into it: done with it
                self._slabs.release(slab)
            self._slots.release()

    def _submit(self, plain: bytes | bytearray | memoryview, keep: bool = False,
                slab: Slab | None = None, lazy: bytes | None = None) -> Future:
        """Encode in the pool; `keep` for catalog chunks, whose bytes the cache wants;
        `slab` is the pooled read buffer `plain` is a view of (released once encoded);
        `lazy`, the name of the large file `plain` is a chunk of, to hash it only (the
        uploader compresses it if the appliance lacks it)."""
        while not self._slots.acquire(timeout=0.5):
            if self.stop.is_set():
                if slab is not None:
                    self._slabs.release(slab)
                raise Cancelled
        try:
            return self.encoders.submit(self._encode_job, plain, keep, slab, lazy)
        except BaseException:
            if slab is not None:
                self._slabs.release(slab)
            self._slots.release()
            raise

    def _cat_sink(self, data: bytes) -> None:
        for piece in self._cat_cut.feed(data):
            self._catalog_piece(piece)

    def _catalog_piece(self, piece: bytes) -> None:
        fut = self._submit(piece, keep=True)
        self.catalog_futures.append(fut)
        if self.on_catalog_piece is not None:
            self.on_catalog_piece(fut)

    def _idx_sink(self, data: bytes) -> None:
        for piece in self._idx_cut.feed(data):
            self.index_futures.append(self._submit(piece, keep=True))

    # --- the walk ---
    def run_tree(self, walker: Walker) -> None:
        # Closed however the loop ends: the walk's listing threads stop with it.
        with contextlib.closing(walker.blocks()) as blocks:
            self._run_blocks(blocks)
        self.stats.excluded = walker.excluded

    def _run_blocks(self, blocks: Iterator[tuple[bytes, list[Child]]]) -> None:
        for cpath, children in blocks:
            if self.stop.is_set():
                raise Cancelled
            previous = self.parent.lookup(cpath)
            # Each child's parent entry and whether it is unchanged, once: the reads ahead
            # below and the entries after it both need them.
            prevs = [previous.get(c.name, _NO_PARENT) for c in children]
            unchanged = self._unchanged
            sames = [unchanged(p[0], c.st) for c, p in zip(children, prevs)]
            self._ahead = self._read_ahead(children, sames)
            entries: list[Entry] = []
            lines: list[bytes | None] = []  # the parent's line of an unchanged file
            pendings: list[tuple[Entry, list]] = []
            links: list[tuple[Entry, _Inode]] = []
            firsts: list[tuple[_Inode, Entry]] = []
            try:
                for child, (prev, prev_line), same in zip(children, prevs, sames):
                    e, line = self._entry(cpath, child, prev, prev_line, same, pendings, links,
                                          firsts)
                    if e is not None:
                        entries.append(e)
                        lines.append(line)
            finally:
                if self._ahead is not None:
                    self._ahead.close()
                    self._ahead = None
            self._queue_block(cpath, entries, lines, pendings, links, firsts)

    def run_stdin(self, name: bytes, stream: io.RawIOBase | io.BufferedIOBase) -> None:
        now = time.time_ns()
        e = Entry(name=name, type=FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(),
                  mtime_ns=now, ctime_ns=now)
        pend: list = []
        e.size = self._read_stream(stream, pend, None)
        self.stats.files += 1
        self.stats.files_read += 1
        self.stats.bytes_total += e.size
        self._queue_block(b"", [e], [None], [(e, pend)], [], [])

    def _entry(self, cpath: bytes, child: Child, prev: Entry | None, prev_line: bytes | None,
               same: bool, pendings: list[tuple[Entry, list]],
               links: list[tuple[Entry, _Inode]], firsts: list[tuple[_Inode, Entry]],
               ) -> tuple[Entry | None, bytes | None]:
        """The child's catalog entry, and the parent's catalog line when the entry is that
        line's to the byte (an unchanged file: written again without encoding).
        `same`: `_unchanged(prev, child.st)` (False for all but regular files); a further
        name of a hard-linked file goes to `links`, a first one to `firsts`."""
        st = child.st
        mode = st.st_mode
        got: SmallRead | None = None  # the file's bytes and xattrs, read ahead
        e = Entry(name=child.name, type=FILE, mode=stat.S_IMODE(mode), uid=st.st_uid,
                  gid=st.st_gid, mtime_ns=st.st_mtime_ns)
        if stat.S_ISREG(mode):
            e.size, e.ino = st.st_size, st.st_ino
            e.ctime_ns = 0 if is_racy(st.st_ctime_ns, child.seen_ns) else st.st_ctime_ns
            key = (st.st_dev, st.st_ino)
            first = self._link_paths.get(key) if st.st_nlink > 1 else None
            if first is not None:
                # A further name of a file stored earlier: its data comes from the first name
                # (whose block is written before or together with this one).
                e.type, e.link = HARDLINK, first
                links.append((e, key))
                self.stats.files += 1
                return e, None
            if not same and self._ahead is not None:
                got = self._ahead.take(child.path)
            pend = self._file_ranges(child, e, prev, same, got)
            if pend is None:
                return None, None
            pendings.append((e, pend))
            if st.st_nlink > 1:
                self._link_paths[key] = join_path(cpath, child.name)
                firsts.append((key, e))
            self.stats.files += 1
            self.stats.bytes_total += e.size
        elif stat.S_ISDIR(mode):
            e.type = DIR
            self.stats.dirs += 1
        elif stat.S_ISLNK(mode):
            e.type = SYMLINK
            try:
                e.link = os.readlink(child.path)
            except OSError as exc:
                self._unreadable(child.path, exc)
                return None, None
            self.stats.symlinks += 1
        elif stat.S_ISFIFO(mode):
            e.type = FIFO
            self.stats.other += 1
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            e.type = CHARDEV if stat.S_ISCHR(mode) else BLOCKDEV
            e.rdev = st.st_rdev
            self.stats.other += 1
        else:
            return None, None  # sockets and doors cannot be restored meaningfully
        if not same or prev is None:
            e.xattrs = got.xattrs if got is not None and got.data is not None \
                else xattrs_of(child.path)
            return e, None
        # Setting or removing an attribute changes the ctime: an unchanged file keeps its
        # parent's, and the backup makes no listxattr call per file. So do its mode and
        # owners (compared all the same: the line is reused only when it is this entry's).
        e.xattrs = prev.xattrs
        reuse = prev.type == FILE and (e.mode, e.uid, e.gid) == (prev.mode, prev.uid, prev.gid)
        return e, prev_line if reuse else None

    def _unreadable(self, path: bytes, exc: OSError) -> None:
        self.stats.unreadable.append((os.fsdecode(path), exc.strerror or str(exc)))

    def _unchanged(self, prev: Entry | None, st: os.stat_result) -> bool:
        """A regular file whose parent entry can stand (its data is not read again)."""
        if (prev is None or prev.ino != st.st_ino or prev.mtime_ns != st.st_mtime_ns
                or prev.ctime_ns != st.st_ctime_ns or prev.size != st.st_size
                or prev.type not in _FILE_TYPES or not stat.S_ISREG(st.st_mode)):
            return False
        low = self.low_use  # usually empty: no per-range test then
        return not low or low.isdisjoint([r.chunk for r in prev.ranges])

    def _read_ahead(self, children: list[Child], sames: list[bool]) -> DirReads | None:
        """Have the prefetch thread read this directory's small files that will be read
        (`smallreads`), and ask the kernel to start reading its larger ones up to WARM_MAX.

        Reading files one after another from a cold disk waits on one I/O at a time;
        WILLNEED hints issued from another thread put them all in flight, so the reads that
        follow mostly hit the page cache (restic gets the same from parallel readers)."""
        if self.prefetch is None:
            return None
        small: list[tuple[bytes, int]] = []
        larger: list[bytes] = []
        links = self._link_paths
        for c, same in zip(children, sames):
            st = c.st
            if same or not stat.S_ISREG(st.st_mode) or (
                    st.st_nlink > 1 and (st.st_dev, st.st_ino) in links):
                continue  # not read: unchanged, or a further name of a file read before
            if st.st_size < SMALL_FILE:
                small.append((c.path, st.st_size))
            elif st.st_size <= WARM_MAX:
                larger.append(c.path)
        ahead = DirReads(self.prefetch, small, SMALL_FILE) if small else None
        if larger:
            self.prefetch.submit(hint_files, larger)
        return ahead

    def _file_ranges(self, child: Child, e: Entry, prev: Entry | None,
                     same: bool, got: SmallRead | None = None) -> list | None:
        """Pending ranges of a regular file: the parent's when unchanged (`same`), its
        bytes read ahead (`got`), else read now."""
        if same and prev is not None:
            self.stats.files_unchanged += 1
            self.stats.bytes_unchanged += e.size
            return [r for r in prev.ranges]
        if got is not None:
            if got.error is not None:
                self._unreadable(child.path, got.error)
                return None
            if got.data is not None:
                return self._small(e, got.data)
            # else it grew past the small-file limit: read below, as a stream
        try:
            fd = open_for_read(child.path)
        except OSError as exc:
            self._unreadable(child.path, exc)
            return None
        pend: list = []
        try:
            with io.FileIO(fd, "rb", closefd=True) as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(0, "no longer a regular file")
                if e.size < SMALL_FILE:
                    data = f.read(SMALL_FILE)
                    extra = f.read(1) if len(data) == SMALL_FILE else b""
                    if not extra:
                        return self._small(e, data)
                    f.seek(0)  # it grew past the small-file limit while we looked
                # A file the parent snapshot held is read again for a change that is
                # usually small: its chunks are compressed only if they turn out to be new.
                # A new file's are nearly all new: compressed at once, as they are read.
                e.size = self._read_stream(SparseReader(fd) if is_sparse(st) else f, pend,
                                           e.name if prev is not None else None)
        except OSError as exc:
            self._unreadable(child.path, exc)
            return None
        self.stats.files_read += 1
        return pend

    def _small(self, e: Entry, data: bytes) -> list:
        """The pending range of a small file's bytes, packed into the open bundle."""
        pend: list = []
        if data:
            off = self._bundle.add(data)
            pend.append(_Pending(self._bundle, off, len(data), 0))
            if self._bundle.full:
                self._seal_bundle()
        e.size = len(data)
        self.stats.files_read += 1
        self.stats.bytes_read += e.size
        return pend

    def _read_stream(self, stream: io.RawIOBase | io.BufferedIOBase | SparseReader,
                     pend: list, lazy: bytes | None) -> int:
        """Cut `stream` into chunks for the encoders; `lazy` names a file whose chunks are
        to be hashed only (the uploader compresses those the appliance lacks)."""
        total = 0
        for plain, slab in cut_stream(self._cdc, stream, self._slabs):
            n = len(plain)
            pend.append(_Pending(self._submit(plain, slab=slab, lazy=lazy), 0, n, n))
            total += n
            self.stats.bytes_read += n
            if self.stop.is_set():
                raise Cancelled
        return total

    def _seal_bundle(self) -> None:
        b = self._bundle
        if b.sealed or not b.buf:
            return
        b.sealed = True
        b.future = self._submit(b.buf)  # no copy: the buffer is not written to again
        b.buf = bytearray()
        self._bundle = Bundle()

    # --- catalog blocks ---
    def _queue_block(self, path: bytes, entries: list[Entry], lines: list[bytes | None],
                     pendings: list[tuple[Entry, list]], links: list[tuple[Entry, _Inode]],
                     firsts: list[tuple[_Inode, Entry]]) -> None:
        self._pending.append((path, entries, lines, pendings, links, firsts))
        self._flush(force=len(self._pending) > self.MAX_PENDING_BLOCKS)

    def _ready(self, pendings: list[tuple[Entry, list]], force: bool) -> bool:
        for _, pend in pendings:
            for p in pend:
                if isinstance(p, _Pending):
                    src = p.src
                    if isinstance(src, Bundle):
                        if not src.sealed:
                            if not force:
                                return False
                            self._seal_bundle()
                        src = src.future
                    if not force and not src.done():
                        return False
        return True

    def _flush(self, force: bool) -> None:
        while self._pending:
            path, entries, lines, pendings, links, firsts = self._pending[0]
            if not self._ready(pendings, force):
                return
            for e, pend in pendings:
                sizes = [0, 0]
                e.ranges = [self._resolve(p, sizes) for p in pend]
                if any(isinstance(p, _Pending) for p in pend):  # read by this backup
                    self.compression.add(e.name, sizes[0], sizes[1])
                self.use.add(e)
            data = self._link_data
            for key, first in firsts:  # their ranges are known now
                data[key] = (first.size, tuple(
                    [(r.chunk, r.offset, r.length, r.chunk_size) for r in first.ranges]))
            for e, key in links:
                e.size, ranges = data[key]
                e.ranges = [Range(*r) for r in ranges]
            self._writer.add_block(path, entries, lines)
            self._pending.popleft()

    def _resolve(self, p: _Pending | Range, sizes: list[int]) -> Range:
        """The range; adds to `sizes` the raw bytes of a chunk compressed now and its share
        of the chunk file (a lazy chunk's are added by the uploader, if it is sent)."""
        if isinstance(p, Range):
            return p
        src = p.src
        chunk = (src.future if isinstance(src, Bundle) else src).result()
        if not (isinstance(chunk, ChunkRef) and chunk.lazy):
            size = chunk.stored_size if isinstance(chunk, ChunkRef) else len(chunk.data)
            sizes[0] += p.length
            sizes[1] += size * p.length // max(chunk.plain_size, 1)
        return Range(chunk.id, p.offset, p.length, chunk.plain_size)

    def finish(self) -> tuple[list[EncodedChunk], list[EncodedChunk]]:
        """Seal what is open, write the remaining blocks, cut the catalog streams' tails."""
        self._seal_bundle()
        self._flush(force=True)
        for piece in self._cat_cut.finish():
            self._catalog_piece(piece)
        for piece in self._idx_cut.finish():
            self.index_futures.append(self._submit(piece, keep=True))
        return ([f.result() for f in self.catalog_futures],
                [f.result() for f in self.index_futures])


# --- the async side --------------------------------------------------------------------------


class Archiver:
    """Runs one backup against the appliance."""

    def __init__(self, client: ApplianceClient, state_dir: Path, *, uploads: int = 4,
                 encoders: int | None = None,
                 on_progress: Callable[[BackupStats], None] | None = None) -> None:
        self.client = client
        self.state_dir = state_dir
        self.uploads = uploads
        self.encoders = encoders or max(2, os.cpu_count() or 2)
        self.on_progress = on_progress
        self.stats = BackupStats()
        #: Possession-proof key of the open session (None: an appliance without proofs).
        self.proof_key: bytes | None = None
        self.lease = 60.0
        #: The last pass's compression summary (rdr_format.compression), sent with the commit.
        self.compression: dict[str, list[int]] = {}

    def _session_file(self, host: str) -> Path:
        return self.state_dir / f"session-{host}.json"

    async def backup(self, sources: list[bytes] | None = None, *, excludes: list[str] | None = None,
                     one_file_system: bool = False, stdin_name: bytes | None = None,
                     stdin: io.RawIOBase | io.BufferedIOBase | None = None,
                     source: str | None = None) -> BackupResult:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        me = await self.client.whoami()
        host = me["host"]
        private_dir(self.state_dir)
        cache = CatalogCache(self.state_dir / "catalog-cache" / host)

        source = source or (
            sources_rule.of_stdin(os.fsdecode(stdin_name)) if stdin_name
            else sources_rule.of_paths([os.fsdecode(s) for s in sources or []]))
        parent_chunks: list[tuple[str, int]] | None = None
        damaged: set[str] = set()
        parent_id = await self._parent_of(source) if stdin_name is None else None
        if parent_id is not None:
            try:
                parent = await self.client.snapshot(parent_id)
                parent_chunks = [(c, s) for c, s in parent["manifest"]["catalog"]["chunks"]]
                damaged = set(parent.get("damaged_chunks", []))
                await cache.fetch(self.client, parent["manifest"]["snapshot"], parent_chunks)
            except ApplianceError as exc:
                if exc.status != 404:
                    raise

        sid, resumed = await self._open_session(host)
        refused: set[str] = set()
        beat = asyncio.create_task(self._heartbeat(sid))
        try:
            for attempt in range(1, MAX_PASSES + 1):
                # The last pass reads every file: nothing of the parent is reused.
                parent = parent_chunks if attempt < MAX_PASSES else None
                if attempt > 1:  # counted afresh, in place (a progress reporter holds it)
                    for f in dataclasses.fields(BackupStats):
                        setattr(self.stats, f.name, getattr(BackupStats(), f.name))
                cat, idx, low_use = await self._pass(
                    sid, cache, self._use_file(host), parent, damaged | refused, sources,
                    excludes, one_file_system, stdin_name, stdin)
                unreadable = self.stats.unreadable
                body = {
                    "catalog": {"chunks": [[c.id, c.plain_size] for c in cat]},
                    "dirindex": {"chunks": [[c.id, c.plain_size] for c in idx]},
                    "agent_version": __version__,
                    "source": [os.fsdecode(s) for s in (sources or [])] or
                              ([f"stdin:{os.fsdecode(stdin_name)}"] if stdin_name else []),
                    "source_name": source,
                    "unreadable": [{"path": p, "error": e}
                                   for p, e in unreadable[:MAX_UNREADABLE_SENT]],
                    "unreadable_count": len(unreadable),
                    "compression": self.compression,
                }
                try:
                    result = await compat.commit(self.client, sid, body)
                    break
                except ApplianceError as exc:
                    if exc.code != "unproven_chunks" or attempt == MAX_PASSES \
                            or stdin_name is not None:
                        raise
                    listed = [c for c in exc.body.get("unproven", []) if isinstance(c, str)]
                    refused.update(listed)
                    if exc.body.get("unproven_count", 0) > len(listed):
                        parent_chunks = None  # more than listed: read everything
                    log.warning("the appliance refused %s chunks of unchanged files (their "
                                "snapshot was removed meanwhile); reading those files again",
                                exc.body.get("unproven_count", len(listed)))
        finally:
            beat.cancel()
        self._session_file(host).unlink(missing_ok=True)
        await loop.run_in_executor(None, self._refresh_cache, cache, cat + idx, cat)
        await loop.run_in_executor(None, self._save_use, host, cat, low_use)
        return BackupResult(result["snapshot"], host, self.stats, time.monotonic() - started,
                            resumed)

    async def _parent_of(self, source: str) -> str | None:
        """The snapshot this backup compares against: the newest of its own source (None:
        the source has none yet); "latest" (the host's newest) on an appliance that lists
        no sources."""
        rows = await self.client.snapshots()
        if not latest.has_sources(rows):
            return "latest"
        row = latest.newest_of_source(rows, source)
        return row["snapshot"] if row is not None else None

    async def _pass(self, sid: str, cache: CatalogCache, use_file: Path,
                    parent_chunks: list[tuple[str, int]] | None, damaged: set[str],
                    sources: list[bytes] | None, excludes: list[str] | None,
                    one_file_system: bool, stdin_name: bytes | None,
                    stdin: io.RawIOBase | io.BufferedIOBase | None,
                    ) -> tuple[list[EncodedChunk], list[EncodedChunk], set[str]]:
        """Walk, read, chunk and upload once; returns the catalog's and index's chunks and
        the new catalog's mostly dead chunks (for the next backup)."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.encoders, thread_name_prefix="rdr-encode")
        packer = WorkerPool(self.encoders, "rdr-pack")
        codecs = ThreadEncoders()
        tally = Tally()
        uploader = ChunkUploader(self.client, sid, self.stats, stop, uploads=self.uploads,
                                 with_proofs=self.proof_key is not None,
                                 on_progress=self._progress,
                                 packing=(packer, codecs.pack, tally.add_bytes))
        emit = uploader.emit
        prefetch = ThreadPoolExecutor(1, thread_name_prefix="rdr-prefetch")
        lister = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="rdr-walk")
        namer = CatalogNamer(self.client, sid)

        def produce() -> tuple[list[EncodedChunk], list[EncodedChunk], set[str]]:
            # Files whose parent ranges use a damaged or mostly dead chunk are read again.
            low_use: set[str] = set(damaged)
            parent_blocks = None
            if parent_chunks is not None:
                saved = bundle_use.load(use_file, parent_chunks)
                if saved is None:  # not the catalog our last backup wrote: read it all first
                    saved = low_use_bundles(iter_blocks(cache.pieces(parent_chunks)))
                low_use |= saved
                parent_blocks = iter_raw_blocks(cache.pieces(parent_chunks))
            producer = Producer(self.stats, emit, pool, ParentCatalog(parent_blocks), low_use,
                                stop, prefetch, self.proof_key, codecs, tally,
                                on_catalog_piece=namer.add)
            if stdin_name is not None:
                producer.run_stdin(stdin_name, stdin if stdin is not None else sys.stdin.buffer)
            else:
                walker = Walker(sources or [], excludes, one_file_system,
                                on_error=lambda p, m: self.stats.unreadable.append(
                                    (os.fsdecode(p), m)), read_ahead=lister)
                producer.run_tree(walker)
            cat, idx = producer.finish()
            return cat, idx, producer.use.low()

        try:
            produced = loop.run_in_executor(None, produce)
            try:
                cat, idx, low_use = await asyncio.shield(produced)
            except BaseException:
                stop.set()
                with contextlib.suppress(BaseException):
                    await produced
                if uploader.failure is not None:  # the producer stopped because of it
                    raise uploader.failure from None
                raise
            await uploader.finish()
            self.compression = tally.summary()
        except BaseException:
            await uploader.abort()
            raise
        finally:
            await namer.close()
            pool.shutdown(wait=False, cancel_futures=True)
            packer.shutdown(wait=False, cancel_futures=True)
            prefetch.shutdown(wait=False, cancel_futures=True)
            lister.shutdown(wait=False, cancel_futures=True)
        return cat, idx, low_use

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _use_file(self, host: str) -> Path:
        return self.state_dir / f"chunk-use-{host}.json"

    def _save_use(self, host: str, catalog: list[EncodedChunk], low_use: set[str]) -> None:
        """After the commit, like the cache: a failure costs the next backup a scan."""
        try:
            bundle_use.save(self._use_file(host), [(c.id, c.plain_size) for c in catalog],
                            low_use)
        except OSError as exc:
            log.warning("chunk use not saved (%s); the next backup reads its parent twice", exc)

    @staticmethod
    def _refresh_cache(cache: CatalogCache, chunks: list[EncodedChunk],
                       catalog: list[EncodedChunk]) -> None:
        """Keep exactly the new catalog's chunks, so the next backup needs no download.

        After the commit, so a failure here costs the next backup a download, never this
        backup: each file is replaced atomically, and one a killed run left damaged is
        rewritten."""
        try:
            for c in catalog:
                if not cache.usable(c.id):
                    cache.store(c.id, c.data)
            cache.keep_only({c.id for c in catalog})
        except OSError as exc:
            log.warning("catalog cache not refreshed (%s); the next backup downloads it", exc)

    async def _open_session(self, host: str) -> tuple[str, bool]:
        """Open a session, resuming the one an interrupted run of this agent left open."""
        import json
        import secrets

        path = self._session_file(host)
        resume = key = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            saved = json.loads(path.read_text())
            resume, key = saved.get("session"), saved.get("key")
        resume = resume if isinstance(resume, str) else None
        if not (isinstance(key, str) and len(key) == 32 and set(key) <= set("0123456789abcdef")):
            # Saved before asking: killed between the appliance opening the session and the
            # id being saved, the next run still resumes it (no 409 for the lease period).
            key = secrets.token_hex(16)
            write_private(path, json.dumps({"session": resume, "key": key,
                                            "url": self.client.ep.url}).encode())
        info = await self._wait_for_slot(resume, key)
        sid = info["session"]
        write_private(path, json.dumps({"session": sid, "key": key,
                                        "url": self.client.ep.url}).encode())
        self.lease = float(info.get("lease_seconds", 60))
        nonce = info.get("nonce")
        self.proof_key = possession_key(bytes.fromhex(nonce)) if isinstance(nonce, str) \
            else None
        return sid, bool(info.get("resumed"))

    async def _wait_for_slot(self, resume: str | None, key: str) -> dict:
        """Open the session, waiting while the appliance is taking its limit of backups at
        once (503 "busy"): at 5 pm a site's agents all start together and take turns."""
        waited = 0.0
        while True:
            try:
                return await self.client.open_session(resume, key)
            except ApplianceError as exc:
                if exc.code != "busy":
                    raise
                if waited == 0:
                    log.warning("appliance busy (%s); waiting for a slot", exc.message)
                delay = float((exc.body or {}).get("retry_after", 3))
                delay *= 0.5 + random.random()  # agents that were refused together spread out
                await asyncio.sleep(delay)
                waited += delay

    async def _heartbeat(self, sid: str) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.lease / 4))
            with contextlib.suppress(Exception):
                await self.client.heartbeat(sid)
