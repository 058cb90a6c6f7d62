"""Restore: write a snapshot's tree (or selected parts of it) below a target directory.

Three stages overlap so neither the network nor the disk waits for the other: a planner walks
the catalog (a synchronous stream read from local files) in a pool thread and cuts it into
batches of operations; the event loop fetches each batch's chunks concurrently; a pool thread
writes the whole batch in one call while the next batch is planned and fetched. Within a
batch, the new files are created by two threads at once (see `_Writer.apply`).

Safety: the catalog is not trusted even though the appliance validated it. Every name is
checked again and every filesystem call is relative to a directory fd that was opened with
O_NOFOLLOW from the target's fd, so neither a symlink named by the catalog nor one already
lying in the target is ever followed, and nothing is written outside the target.

Directory metadata is applied last, deepest first: creating children changes a directory's
mtime, and a read-only directory mode would stop its children from being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Protocol

from rdr_format.catalog import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    CatalogError,
    Entry,
    Range,
    check_name,
    join_path,
    path_key,
    split_path,
)
from rdr_format.chunkfile import MAX_PLAIN_SIZE, ChunkDecoder, ChunkError, is_chunk_id
from rdr_format.compat import SLOTS, zip_strict
from rdr_format.workers import run_in, start_in

from .errors import CHUNK_STATUSES, SourceError

log = logging.getLogger("rdr.agent.restorer")

#: A write batch closes once it holds this many files, this many chunk bytes or this many ops.
BATCH_FILES = 64
BATCH_BYTES = 16 * 2**20
BATCH_OPS = 1024
#: Batches being fetched (and decoded) ahead of the one being written: at most FETCH_AHEAD,
#: and no further once their chunks add up to FETCH_AHEAD_BYTES.
FETCH_AHEAD = 8
FETCH_AHEAD_BYTES = 2 * BATCH_BYTES
#: Open directory fds kept between operations.
DIR_FDS = 128
#: A batch's new files are written by two threads once it holds this many.
SPLIT_FILES = 4

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo that lies where a file goes fails (ENXIO) instead of hanging.
_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
               | os.O_NONBLOCK)
_XATTR_IGNORABLE = frozenset((errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM))
_PRIVILEGED_XATTRS = (b"trusted.", b"security.")
#: What a strange entry can make the os functions raise (bad values, not bad luck).
_ENTRY_ERRORS = (OSError, ValueError, OverflowError)

#: What to do with an entry that already exists where one is restored (restic's choices):
#: replace it; replace it only when it differs (a file's size or mtime, a symlink's target);
#: keep it.
OVERWRITE_ALWAYS, OVERWRITE_IF_CHANGED, OVERWRITE_NEVER = "always", "if-changed", "never"
OVERWRITE_CHOICES = (OVERWRITE_ALWAYS, OVERWRITE_IF_CHANGED, OVERWRITE_NEVER)


@dataclass
class RestoreSummary:
    """What a restore did; per-entry problems are listed here instead of aborting it."""

    files: int = 0  # regular files written (incl. hardlinks)
    dirs: int = 0
    symlinks: int = 0
    special: int = 0  # fifos, device nodes
    bytes_written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: Entries that were already there and kept (overwrite "never"), by path.
    kept: list[str] = field(default_factory=list)
    #: Entries already there and equal to the snapshot's (overwrite "if-changed").
    unchanged: int = 0
    duration: float = 0.0

    def to_json(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "symlinks": self.symlinks,
                "special": self.special, "bytes_written": self.bytes_written,
                "errors": [{"path": p, "error": m} for p, m in self.errors],
                "error_count": len(self.errors), "kept": self.kept,
                "kept_count": len(self.kept), "unchanged": self.unchanged,
                "duration": round(self.duration, 3)}


def _show(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- chunk sources ------------------------------------------------------------------------------


class ChunkSource(Protocol):
    async def plain(self, cid: str) -> bytes:
        """The verified plaintext of data chunk `cid`."""
        ...


class ChunkFetcher(Protocol):
    async def get_chunk(self, snap: str, cid: str) -> bytes:
        """The stored (encoded) chunk `cid` of snapshot `snap`."""
        ...


class RemoteChunks:
    """Chunks of snapshot `snap` from the appliance, verified in `pool`, with an LRU cache.

    Bundle chunks hold many small files that land in different batches, so plaintexts are
    kept (up to `cache_bytes`) and each chunk is fetched once; a request for a chunk that is
    already on its way waits for that download instead of starting another.
    """

    def __init__(self, client: ChunkFetcher | None, snap: str, pool: Executor,
                 cache_bytes: int = 32 * 2**20, concurrency: int = 8, *,
                 fetch: Callable[[str], Awaitable[bytes]] | None = None,
                 verify: bool = True) -> None:
        """`fetch(cid)`, when given, replaces `client.get_chunk(snap, cid)`: a push-restore
        job reads another host's snapshot through its job's endpoint. Its chunks hold only
        the selected files' bytes, so they cannot match their ids (`verify` False; the
        appliance verified the stored chunk before masking it, TLS carries it)."""
        self._verify = verify
        if fetch is None:
            if client is None:
                raise ValueError("RemoteChunks needs a client or a fetch function")
            fetch = partial(client.get_chunk, snap)
        self._fetch = fetch
        self._snap = snap
        self._pool = pool
        self._cache_bytes = cache_bytes
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._sem = asyncio.Semaphore(concurrency)
        self._local = threading.local()
        self.fetched = 0  # downloads made (for statistics and tests)

    async def plain(self, cid: str) -> bytes:
        data = self._lru.get(cid)
        if data is not None:
            self._lru.move_to_end(cid)
            return data
        fut = self._inflight.get(cid)
        if fut is None:
            fut = asyncio.ensure_future(self._load(cid))
            self._inflight[cid] = fut
            fut.add_done_callback(partial(self._landed, cid))
        # shield: one waiter giving up must not cancel the download for the others
        return await asyncio.shield(fut)

    async def _load(self, cid: str) -> bytes:
        if not is_chunk_id(cid):
            raise ChunkError(f"malformed chunk id {cid!r}")
        async with self._sem:
            data = await self._fetch(cid)
        self.fetched += 1
        return await run_in(self._pool, self._decode, data, cid)

    def _decode(self, data: bytes, cid: str) -> bytes:
        dec = getattr(self._local, "dec", None)
        if dec is None:
            dec = self._local.dec = ChunkDecoder()
        return dec.decode(data, cid if self._verify else None)

    def _landed(self, cid: str, fut: asyncio.Future[bytes]) -> None:
        self._inflight.pop(cid, None)
        if fut.cancelled() or fut.exception() is not None:  # exception() marks it retrieved
            return
        data = fut.result()
        if len(data) > self._cache_bytes or cid in self._lru:
            return
        self._lru[cid] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes:
            _, old = self._lru.popitem(last=False)
            self._cached -= len(old)


# --- operations and batches ---------------------------------------------------------------------


@dataclass(**SLOTS)
class _Op:
    """One thing to create. File data comes as slices (`ranges` from file offset `offset`)."""

    parent: bytes
    entry: Entry
    job: int = 0
    offset: int = 0
    ranges: list[Range] = field(default_factory=list)
    first: bool = True
    last: bool = True
    link_only: bool = False  # a hardlink to be made with link(); data only if that fails

    @property
    def path(self) -> bytes:
        return join_path(self.parent, self.entry.name)


def _data_op(parent: bytes, e: Entry, job: int) -> _Op:
    return _Op(parent, e, job=job, ranges=e.ranges)


class _Batcher:
    """Cuts a stream of ops into write batches; large files are split into slices."""

    def __init__(self, ops: Iterator[_Op]) -> None:
        self._ops = ops
        self._carry: _Op | None = None
        #: next_batch has returned None (set in the pool thread, read on the loop).
        self.exhausted = False

    def next_batch(self) -> tuple[list[_Op], list[str], int] | None:
        """The next batch: its ops, the chunks they need and those chunks' size; None at
        the end."""
        ops: list[_Op] = []
        chunks: dict[str, None] = {}
        nbytes = nfiles = 0
        while len(ops) < BATCH_OPS and nfiles < BATCH_FILES and nbytes < BATCH_BYTES:
            op = self._carry if self._carry is not None else next(self._ops, None)
            self._carry = None
            if op is None:
                break
            if op.entry.type in (FILE, HARDLINK):
                if op.first:
                    nfiles += 1
                rs = op.ranges
                i = 0
                while i < len(rs):
                    r = rs[i]
                    if r.chunk not in chunks:
                        if nbytes >= BATCH_BYTES and (ops or i):
                            break
                        chunks[r.chunk] = None
                        nbytes += r.chunk_size
                    i += 1
                if i < len(rs):
                    if i == 0:
                        self._carry = op
                        break
                    done = sum(r.length for r in rs[:i])
                    ops.append(_Op(op.parent, op.entry, op.job, op.offset, rs[:i], op.first,
                                   False))
                    self._carry = _Op(op.parent, op.entry, op.job, op.offset + done, rs[i:],
                                      False, op.last)
                    break
            ops.append(op)
        if not ops:
            self.exhausted = True
            return None
        return ops, list(chunks), nbytes


class _Filter:
    """The include list: which catalog paths are selected, which are only ancestors."""

    def __init__(self, include: list[bytes] | None, errors: list[tuple[str, str]]) -> None:
        self.all = include is None
        self.paths: list[bytes] = []
        for raw in include or ():
            inc = raw.strip(b"/")
            if not inc:
                self.all = True
                continue
            try:
                split_path(inc)
            except CatalogError as exc:
                errors.append((_show(raw), f"invalid include path: {exc}"))
                continue
            self.paths.append(inc)
        self.wanted = set(self.paths)
        self.matched: set[bytes] = set()

    def selected(self, path: bytes) -> bool:
        return self.all or any(path == i or path.startswith(i + b"/") for i in self.paths)

    def ancestor(self, path: bytes) -> bool:
        prefix = path + b"/" if path else b""
        return not self.all and any(i.startswith(prefix) for i in self.paths)


def block_filter(include: list[bytes] | None) -> Callable[[bytes], bool] | None:
    """Which catalog blocks a restore of `include` reads (the selected paths' and their
    ancestors'); None when it reads them all (no include list, or one naming the root).
    Invalid paths are left out here: the restore reports them."""
    flt = _Filter(include, [])
    if flt.all:
        return None
    return lambda path: flt.selected(path) or flt.ancestor(path)


def selected_bytes(blocks: Iterable[tuple[bytes, Iterable[Entry]]], include: list[bytes],
                   ) -> int:
    """The data bytes restoring `include` writes (hard links to a file that is restored too
    are links, not data), for the page's progress bar. Only the blocks that can hold a
    selected entry are iterated (with `LazyEntries`, the others are never decoded)."""
    incs = [p.strip(b"/") for p in include]
    everything = any(not p for p in incs)
    wanted = set(incs)
    parents = {i.rpartition(b"/")[0] for i in incs}

    def under(path: bytes) -> bool:
        return everything or any(path == i or path.startswith(i + b"/") for i in incs)

    total = 0
    for path, entries in blocks:
        whole = under(path)
        if not whole and path not in parents:
            continue
        for e in entries:
            if e.type not in (FILE, HARDLINK):
                continue
            if not whole and join_path(path, e.name) not in wanted:
                continue
            if e.type == HARDLINK and e.link and under(e.link):
                continue
            total += e.size
    return total


def _earlier(src: bytes, parent: bytes, name: bytes) -> bool:
    """Is catalog path `src` before entry `name` of block `parent` in catalog order?"""
    sp, _, sn = src.rpartition(b"/")
    return (path_key(sp), sn) < (path_key(parent), name)


class _Planner:
    """Turns the catalog blocks into ops (runs in pool threads: the blocks read local files)."""

    def __init__(self, blocks: Iterator[tuple[bytes, Iterable[Entry]]], flt: _Filter,
                 errors: list[tuple[str, str]], jobs: Iterator[int],
                 bad_dirs: set[bytes]) -> None:
        self._blocks = blocks
        self._flt = flt
        self._errors = errors
        self._jobs = jobs
        self._bad_dirs = bad_dirs

    def ops(self) -> Iterator[_Op]:
        flt, err = self._flt, self._errors.append
        pending = {b""}  # directories restored whose block has not come yet
        while True:
            try:
                block = next(self._blocks, None)
            except ValueError as exc:  # CatalogError, ChunkError of a cached catalog chunk
                err(("", f"catalog is unreadable, restore stopped early: {exc}"))
                break
            if block is None:
                break
            path, lazy = block
            if path not in pending:
                if flt.selected(path) or flt.ancestor(path):
                    if path.rpartition(b"/")[0] not in self._bad_dirs:
                        err((_show(path), "block is not a directory of the snapshot; skipped"))
                    self._bad_dirs.add(path)
                continue  # never decoded (`LazyEntries`): a one-file restore decodes its path
            try:
                entries = list(lazy)
            except ValueError as exc:
                err(("", f"catalog is unreadable, restore stopped early: {exc}"))
                break
            pending.discard(path)
            whole = flt.selected(path)
            for e in entries:
                full = join_path(path, e.name)
                try:
                    check_name(e.name)
                except CatalogError as exc:
                    err((_show(full), str(exc)))
                    continue
                if not whole and not flt.selected(full) and not (
                        e.type == DIR and flt.ancestor(full)):
                    continue
                if full in flt.wanted:
                    flt.matched.add(full)
                if e.type == DIR:
                    pending.add(full)
                    yield _Op(path, e)
                elif e.type == FILE:
                    yield _data_op(path, e, next(self._jobs))
                elif e.type == HARDLINK:
                    op = self._hardlink(path, e, full)
                    if op is not None:
                        yield op
                elif e.type in (SYMLINK, FIFO, CHARDEV, BLOCKDEV):
                    yield _Op(path, e)
                else:
                    err((_show(full), f"unknown entry type {e.type!r}"))
        for inc in flt.paths:
            if inc not in flt.matched:
                err((_show(inc), "not found in the snapshot"))

    def _hardlink(self, path: bytes, e: Entry, full: bytes) -> _Op | None:
        src = e.link
        try:
            if not src:
                raise CatalogError("hardlink has no target")
            split_path(src)
        except CatalogError as exc:
            self._errors.append((_show(full), f"invalid hardlink target: {exc}"))
            return None
        op = _data_op(path, e, next(self._jobs))
        op.link_only = self._flt.selected(src) and _earlier(src, path, e.name)
        if op.link_only:
            op.ranges = []
        return op


# --- writing ------------------------------------------------------------------------------------


class _Dirs:
    """Open directory fds by catalog path, opened component by component with O_NOFOLLOW.

    Fds evicted from the LRU are closed only between operations, so an fd fetched for the
    current operation stays valid while it runs.
    """

    def __init__(self, root_fd: int, size: int = DIR_FDS) -> None:
        self.root = root_fd
        self._size = max(size, 2)
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._evicted: list[int] = []

    def get(self, path: bytes, create: bool = True) -> int:
        if not path:
            return self.root
        fd = self._lru.get(path)
        if fd is not None:
            self._lru.move_to_end(path)
            return fd
        parts = split_path(path)
        i = len(parts) - 1
        fd = self.root
        while i > 0:
            cached = self._lru.get(b"/".join(parts[:i]))
            if cached is not None:
                fd = cached
                break
            i -= 1
        for j in range(i, len(parts)):
            fd = self._open(fd, parts[j], create)
            self._lru[b"/".join(parts[:j + 1])] = fd
            if len(self._lru) > self._size:
                self._evicted.append(self._lru.popitem(last=False)[1])
        return fd

    @staticmethod
    def _open(parent: int, name: bytes, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    def evicted(self) -> int:
        """Fds evicted and not yet closed."""
        return len(self._evicted)

    def release(self) -> None:
        while self._evicted:
            os.close(self._evicted.pop())

    def close(self) -> None:
        self.release()
        while self._lru:
            os.close(self._lru.popitem()[1])


def _chmod_nofollow(pfd: int, name: bytes, mode: int) -> None:
    """chmod `name` in `pfd` without following a symlink: through an O_PATH descriptor of
    the entry itself (what glibc's fchmodat does), so a planted symlink is never followed and
    chmod of a symlink is a plain OSError (EOPNOTSUPP), reported for that entry."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    while data:
        n = os.pwrite(fd, data, pos)
        data = data[n:]
        pos += n


@cache
def _zero_chunk() -> bytes:
    return bytes(MAX_PLAIN_SIZE)


def _all_zero(plain: bytes) -> bool:
    """Whether a chunk's plaintext is all zero bytes: a chunk cut from a run of zeros (a
    sparse file's hole, a disk image's free space). Almost every other chunk is told apart
    by its first or last byte; the rest by one memcmp against a zero buffer, made the first
    time one is needed."""
    if not plain or plain[0] or plain[-1] or len(plain) > MAX_PLAIN_SIZE:
        return False
    return _zero_chunk().startswith(plain)


class _Writer:
    """Applies batches of ops in order; used by one pool thread at a time, which hands half
    of each batch's new files to the helper thread."""

    def __init__(self, root_fd: int, summary: RestoreSummary, jobs: Iterator[int],
                 bad_dirs: set[bytes], on_progress: Callable[[int, int], None] | None,
                 helper: Executor, allow_special: bool = True,
                 overwrite: str = OVERWRITE_ALWAYS, sparse: bool = True) -> None:
        """`helper`: a thread of its own (not the restore's pool, whose queue holds the
        decodes) writing half of each batch's new files. `sparse`: see restore_blocks."""
        if overwrite not in OVERWRITE_CHOICES:
            raise ValueError(f"overwrite must be one of {', '.join(OVERWRITE_CHOICES)}")
        self.summary = summary
        self.overwrite = overwrite
        #: Setuid/setgid bits, file capabilities and device nodes are restored (see
        #: restore_blocks); otherwise stripped or skipped, each one reported.
        self.allow_special = allow_special
        self.sparse = sparse
        self.is_root = os.geteuid() == 0
        self.dirs = _Dirs(root_fd)
        self.dir_meta: list[tuple[bytes, Entry]] = []
        self.open: dict[int, int] = {}  # job -> fd of a file whose later slices are to come
        self.failed_jobs: set[int] = set()
        self.failed_files: set[bytes] = set()
        self.bad_dirs = bad_dirs  # directories whose contents are not restored
        self.fallback: list[_Op] = []  # hardlinks that could not be linked: write their data
        #: Directories this restore made: nothing can lie in them that it must not replace,
        #: so their entries are created without looking first (a stat per file).
        self.made: set[bytes] = set()
        self._jobs = jobs
        self._on_progress = on_progress
        self._helper = helper

    def _error(self, path: bytes, message: str) -> None:
        self.summary.errors.append((_show(path), message))

    # -- batches --

    def apply(self, ops: list[_Op], plains: dict[str, bytes | BaseException]) -> None:
        """Apply a batch: every op in order, except that new files (whole in this batch, in a
        directory this restore made or with overwrite "always") are held back and then
        written by this thread and the `helper` at once.

        Why: creating a file is mostly the kernel's work (on a journal-less ext4 that has
        just lost a tree, a scan of the recently freed inodes), and one writer thread left a
        core idle while the rest of the restore waited for it (docs/BENCHMARKS.md, ninth
        round). Held-back files need nothing the later ops of the batch make (their
        directory exists, and names are unique in a directory), except a hard link's target:
        they are written before a hard link is made. Directory fds evicted from the cache
        are closed only once no held-back file may need them (at most DIR_FDS wait)."""
        new: list[tuple[int, _Op]] = []
        try:
            for op in ops:
                if self._is_new_whole_file(op):
                    pfd = self._parent(op)
                    if pfd is None:
                        self._fail(op, None)
                    else:
                        new.append((pfd, op))
                else:
                    if op.entry.type == HARDLINK:
                        self._new_files(new, plains)  # its target may be among them
                    self._apply(op, plains)
                if new and self.dirs.evicted() > DIR_FDS:
                    self._new_files(new, plains)  # they may use evicted fds: write them first
                if not new:
                    self.dirs.release()
            self._new_files(new, plains)
        finally:
            self.dirs.release()
        if self._on_progress is not None:
            self._on_progress(self.summary.files, self.summary.bytes_written)

    def _is_new_whole_file(self, op: _Op) -> bool:
        """A regular file whose data all comes in this op and that replaces nothing to be
        checked first (`_may_replace` is then true without a stat)."""
        return (op.entry.type == FILE and op.first and op.last
                and self._replaces_without_looking(op.parent))

    def _replaces_without_looking(self, parent: bytes) -> bool:
        """Whatever lies in `parent` may be replaced unseen: overwrite "always", or a
        directory this restore made (nothing can lie in it that it must not replace)."""
        return self.overwrite == OVERWRITE_ALWAYS or parent in self.made

    def _new_files(self, new: list[tuple[int, _Op]],
                   plains: dict[str, bytes | BaseException]) -> None:
        """Write `new` (parent fd, op) in two halves at once, cut where the directory changes
        near the middle (creating files in one directory takes that directory's lock), and
        empty it."""
        if not new:
            return
        if len(new) < SPLIT_FILES:
            files, nbytes = self._write_new(new, plains)
        else:
            mid = len(new) // 2
            cuts = [i for i in range(1, len(new)) if new[i][1].parent != new[i - 1][1].parent]
            cut = min(cuts, key=lambda i: abs(i - mid), default=mid)
            if abs(cut - mid) > len(new) // 4:
                cut = mid
            other = self._helper.submit(self._write_new, new[cut:], plains)
            try:
                files, nbytes = self._write_new(new[:cut], plains)
            finally:
                more_files, more_bytes = other.result()  # its fds stay open until it ends
            files += more_files
            nbytes += more_bytes
        new.clear()
        self.summary.files += files
        self.summary.bytes_written += nbytes

    def _write_new(self, new: list[tuple[int, _Op]],
                   plains: dict[str, bytes | BaseException]) -> tuple[int, int]:
        """Create and write whole files; (files, bytes) written. Runs in two threads at
        once: of the writer's state it only appends to the summary's errors and adds to
        `failed_files` (single, atomic operations); the counts are added by the caller.
        The two halves' errors may therefore be listed in either order."""
        files = nbytes = 0
        for pfd, op in new:
            views = self._views(op, plains)
            if views is None:
                continue
            fd = self._create(pfd, op)
            if fd < 0:
                continue
            try:
                n = self._write(fd, op, views)
            finally:
                os.close(fd)
            if n >= 0:
                files += 1
                nbytes += n
        return files, nbytes

    def _apply(self, op: _Op, plains: dict[str, bytes | BaseException]) -> None:
        t = op.entry.type
        if t == FILE or (t == HARDLINK and not op.link_only):
            self._file(op, plains)
            return
        pfd = self._parent(op)
        if pfd is None:
            return
        e, full = op.entry, op.path
        try:
            if t == DIR:
                self._dir(pfd, e, full)
            elif t == HARDLINK:
                self._hardlink(pfd, op)
            elif t == SYMLINK:
                self._symlink(pfd, e, full)
            else:
                self._special(pfd, e, full)
        except _ENTRY_ERRORS as exc:
            self._error(full, f"cannot create: {_why(exc)}")
            if t == DIR:
                self.bad_dirs.add(full)

    def _parent(self, op: _Op) -> int | None:
        """The parent's fd, or None (error noted once per directory) if it is unusable."""
        if op.parent not in self.bad_dirs:
            try:
                return self.dirs.get(op.parent)
            except _ENTRY_ERRORS as exc:
                self.bad_dirs.add(op.parent)
                self._error(op.parent, f"cannot open directory: {_why(exc)}")
        if op.entry.type == DIR:
            self.bad_dirs.add(op.path)
        return None

    # -- entry kinds --

    def _dir(self, pfd: int, e: Entry, full: bytes) -> None:
        existed = False
        try:
            os.mkdir(e.name, 0o700, dir_fd=pfd)
        except FileExistsError:
            existed = True
        else:
            self.made.add(full)
        fd = self.dirs.get(full)
        if existed and not self.is_root:
            # a read-only directory left by an earlier restore must take children again
            st = os.fstat(fd)
            if st.st_mode & 0o700 != 0o700 and st.st_uid == os.geteuid():
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        if not (existed and self.overwrite == OVERWRITE_NEVER):
            self.dir_meta.append((full, e))  # an existing directory kept keeps its metadata
        self.summary.dirs += 1

    def _file(self, op: _Op, plains: dict[str, bytes | BaseException]) -> None:
        if op.job in self.failed_jobs:
            if op.last:
                self.failed_jobs.discard(op.job)
            return
        views = self._views(op, plains)
        if views is None:
            return
        if op.first:
            pfd = self._parent(op)
            if pfd is None:
                self._fail(op, None)
                return
            if not self._may_replace(pfd, op.entry, op.path):
                self._skip(op)
                return
            fd = self._create(pfd, op)
            if fd < 0:
                return
        else:
            fd = self.open.pop(op.job)
        try:
            n = self._write(fd, op, views)
        except BaseException:
            os.close(fd)
            raise
        if n >= 0:
            self.summary.bytes_written += n
            if not op.last:
                self.open[op.job] = fd  # its later slices come in later batches
                return
            self.summary.files += 1
        os.close(fd)

    def _views(self, op: _Op,
               plains: dict[str, bytes | BaseException]) -> list[memoryview | int] | None:
        """The plaintext slices `op` writes, or None (the file failed, reported); with
        `sparse`, a slice of an all-zero chunk is its length instead (left a hole)."""
        views: list[memoryview | int] = []
        for r in op.ranges:
            p = plains.get(r.chunk)
            if p is None:
                p = ChunkError("not fetched")
            if isinstance(p, BaseException):
                self._fail(op, f"chunk {r.chunk[:16]}: {_why(p)}")
                return None
            if len(p) != r.chunk_size or r.offset + r.length > len(p):
                self._fail(op, f"chunk {r.chunk[:16]} has {len(p)} bytes, catalog says "
                               f"{r.chunk_size}")
                return None
            if self.sparse and _all_zero(p):
                views.append(r.length)
            else:
                views.append(memoryview(p)[r.offset:r.offset + r.length])
        return views

    def _create(self, pfd: int, op: _Op) -> int:
        """An fd of `op`'s file made empty in `pfd`, or -1 (the file failed, reported)."""
        name = op.entry.name
        try:
            try:
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
            except PermissionError:
                # a read-only file (of an earlier restore, say): replace it instead
                os.unlink(name, dir_fd=pfd)
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        except _ENTRY_ERRORS as exc:
            self._fail(op, f"cannot create: {_why(exc)}")
            return -1
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "something other than a file is in the way")
        except _ENTRY_ERRORS as exc:
            os.close(fd)
            self._fail(op, f"cannot write: {_why(exc)}")
            return -1
        return fd

    def _write(self, fd: int, op: _Op, views: list[memoryview | int]) -> int:
        """Write `op`'s slices, and after the file's last its metadata; the bytes restored,
        or -1 (the file failed, reported). A hole (an int) is skipped: the file was created
        empty, so what is not written reads as zeros; a file ending in one is extended to
        its size."""
        pos = op.offset
        try:
            for v in views:
                if isinstance(v, int):
                    pos += v
                else:
                    _pwrite_all(fd, v, pos)
                    pos += len(v)
            if op.last:
                if views and isinstance(views[-1], int):
                    os.ftruncate(fd, pos)
                self._meta_fd(fd, op.entry, op.path)
        except _ENTRY_ERRORS as exc:
            self._fail(op, f"cannot write: {_why(exc)}", written=True)
            return -1
        return pos - op.offset

    def _may_replace(self, pfd: int, e: Entry, full: bytes) -> bool:
        """May entry `e` be written where something may already lie? False notes why not:
        kept (overwrite "never") or equal to the snapshot's (overwrite "if-changed")."""
        if self._replaces_without_looking(full.rpartition(b"/")[0]):
            return True
        try:
            st = os.stat(e.name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(st.st_mode):
            return True  # creating over a directory fails and is reported as it was
        if self.overwrite == OVERWRITE_NEVER:
            self.summary.kept.append(_show(full))
            return False
        if e.type == SYMLINK:
            same = stat.S_ISLNK(st.st_mode) and os.readlink(e.name, dir_fd=pfd) == e.link
        else:
            same = (stat.S_ISREG(st.st_mode) and st.st_size == e.size
                    and st.st_mtime_ns == e.mtime_ns)
        if same:
            self.summary.unchanged += 1
        return not same

    def _skip(self, op: _Op) -> None:
        """Leave a file that is not to be replaced, and the later slices of its data."""
        self.failed_files.add(op.path)  # a later hard link to it must not link to it
        if not op.last:
            self.failed_jobs.add(op.job)

    def _fail(self, op: _Op, message: str | None, written: bool = False) -> None:
        """`written`: the file was created and some of it may be written (as is so when
        a later slice fails): the error says it is left incomplete."""
        if message is not None:
            if written or not op.first:
                message += " (file left incomplete)"
            self._error(op.path, message)
        self.failed_files.add(op.path)
        fd = self.open.pop(op.job, None)
        if fd is not None:
            os.close(fd)
        if not op.last:
            self.failed_jobs.add(op.job)

    def _hardlink(self, pfd: int, op: _Op) -> None:
        e, src = op.entry, op.entry.link or b""
        sparent, _, sname = src.rpartition(b"/")
        if src not in self.failed_files and sparent not in self.bad_dirs:
            if not self._may_replace(pfd, e, op.path):
                return
            try:
                sfd = self.dirs.get(sparent, create=False)
                self._replacing(pfd, e.name, lambda: os.link(
                    sname, e.name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False))
                st = os.stat(e.name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_size == e.size:
                    self.summary.files += 1
                    return
                os.unlink(e.name, dir_fd=pfd)  # linked to something that is not that file
            except _ENTRY_ERRORS:
                pass
        self.fallback.append(_data_op(op.parent, e, next(self._jobs)))

    def _symlink(self, pfd: int, e: Entry, full: bytes) -> None:
        if not e.link or b"\0" in e.link:
            raise OSError(errno.EINVAL, "invalid symlink target")
        link = e.link
        if not self._may_replace(pfd, e, full):
            return
        self._replacing(pfd, e.name, lambda: os.symlink(link, e.name, dir_fd=pfd))
        self.summary.symlinks += 1
        self._meta_nofollow(pfd, e, full, chmod=False)

    def _special(self, pfd: int, e: Entry, full: bytes) -> None:
        if self.overwrite != OVERWRITE_ALWAYS and not self._may_replace(pfd, e, full):
            return
        if e.type == FIFO:
            self._replacing(pfd, e.name, lambda: os.mkfifo(e.name, 0o600, dir_fd=pfd))
        else:
            if not self.is_root:
                self._error(full, "device nodes can only be restored as root")
                return
            if not self.allow_special:
                self._error(full, "device node not created: this restore does not allow "
                                  "device nodes")
                return
            kind = stat.S_IFCHR if e.type == CHARDEV else stat.S_IFBLK
            self._replacing(pfd, e.name,
                            lambda: os.mknod(e.name, kind | 0o600, e.rdev, dir_fd=pfd))
        self.summary.special += 1
        self._meta_nofollow(pfd, e, full, chmod=True)

    @staticmethod
    def _replacing(pfd: int, name: bytes, create: Callable[[], None]) -> None:
        """Create, replacing a non-directory that is already there (never following it)."""
        try:
            create()
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                raise
            os.unlink(name, dir_fd=pfd)
            create()

    # -- metadata --

    def _meta_fd(self, fd: int, e: Entry, full: bytes) -> None:
        """Owner, mode, xattrs, mtime of an open file or directory, in the order that keeps
        them (chown clears setuid, so chmod follows it; mtime goes last)."""
        try:
            if self.is_root:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, self._mode(e, full))
            self._xattrs(fd, e, full, symlink=False)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        except _ENTRY_ERRORS as exc:
            self._error(full, f"cannot set metadata: {_why(exc)}")

    def _meta_nofollow(self, pfd: int, e: Entry, full: bytes, chmod: bool) -> None:
        try:
            if self.is_root:
                os.chown(e.name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            if chmod:
                _chmod_nofollow(pfd, e.name, self._mode(e, full))
            if e.xattrs:
                # setxattr takes no dir fd; the /proc link resolves to the directory itself
                self._xattrs(b"/proc/self/fd/%d/%s" % (pfd, e.name), e, full,
                             symlink=e.type == SYMLINK)
            os.utime(e.name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        except _ENTRY_ERRORS as exc:
            self._error(full, f"cannot set metadata: {_why(exc)}")

    def _mode(self, e: Entry, full: bytes) -> int:
        """The permission bits to set: without `allow_special`, a non-directory loses its
        setuid and setgid bits (reported); a directory's setgid only steers group
        inheritance and is kept."""
        mode = stat.S_IMODE(e.mode)
        privileged = mode & (stat.S_ISUID | stat.S_ISGID) if e.type != DIR else 0
        if privileged and not self.allow_special:
            self._error(full, "setuid/setgid bits not restored: this restore does not allow "
                              "them")
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def _xattrs(self, target: int | bytes, e: Entry, full: bytes, symlink: bool) -> None:
        for name, value in e.xattrs or ():
            if name == b"security.capability" and not self.allow_special:
                # file capabilities grant privileges the way setuid does
                self._error(full, "file capabilities not restored: this restore does not "
                                  "allow them")
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except _ENTRY_ERRORS as exc:
                if getattr(exc, "errno", None) in _XATTR_IGNORABLE and (
                        symlink or (not self.is_root and name.startswith(_PRIVILEGED_XATTRS))):
                    continue  # not ours to set, or user.* on a symlink: Linux forbids it
                self._error(full, f"cannot set xattr {_show(name)}: {_why(exc)}")

    def finish(self) -> None:
        """Directory metadata, deepest first (reverse pre-order puts children first)."""
        for path, e in reversed(self.dir_meta):
            try:
                fd = self.dirs.get(path, create=False)
            except _ENTRY_ERRORS as exc:
                self._error(path, f"cannot set metadata: {_why(exc)}")
                continue
            finally:
                self.dirs.release()
            self._meta_fd(fd, e, path)
        self.dir_meta.clear()
        if self._on_progress is not None:
            self._on_progress(self.summary.files, self.summary.bytes_written)

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()
        self.dirs.close()


# --- the pipeline -------------------------------------------------------------------------------


async def _fetch(source: ChunkSource, cids: list[str]) -> dict[str, bytes | BaseException]:
    """Plaintexts of a batch's chunks; a bad or missing chunk becomes its exception (the
    files using it fail), anything else (appliance unreachable, ...) is raised."""

    async def one(cid: str) -> bytes | BaseException:
        try:
            return await source.plain(cid)
        except ChunkError as exc:
            return exc
        except SourceError as exc:
            if exc.status in CHUNK_STATUSES:
                return exc
            raise

    tasks = [asyncio.ensure_future(one(c)) for c in cids]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await _settle(*tasks)
        raise
    return dict(zip_strict(cids, results))


async def _settle(*futs: asyncio.Future | None) -> None:
    """Wait for pool work still running (it may use fds about to be closed). A pool call
    is awaited through `asyncio.shield` wherever the writer may be closed after it: a
    cancelled future is done at once, while its thread goes on with the call."""
    live = [f for f in futs if f is not None]
    if live:
        await asyncio.wait(live)
        for f in live:
            if not f.cancelled():
                f.exception()


async def _pipeline(batcher: _Batcher, writer: _Writer, source: ChunkSource,
                    pool: Executor) -> None:
    """Fetch batches ahead of the one being written (FETCH_AHEAD, FETCH_AHEAD_BYTES).

    Measured on a fresh filesystem, the one-batch overlap this replaced left the writer
    waiting for its next batch's chunks for most of a restore (1.6 s of 2.6): batches are
    small (BATCH_FILES) and each one's fetch paid its round trips after the previous write
    was handed over. Now several batches' chunks are being fetched and decoded while one is
    written. Bounded by bytes as well as batches: a batch of small files needs a chunk or
    two, one of large files up to BATCH_BYTES, and since the writer creates files in two
    threads, two batches ahead left it waiting for small files' chunks (docs/BENCHMARKS.md,
    ninth round). Memory: the plaintexts of the batches ahead (about FETCH_AHEAD_BYTES, as
    with two full batches before) and the chunk cache; with the agent's malloc setting freed
    buffers stay in its heap, so both are kept small (measured: four full batches and a
    64 MiB cache peaked at 151-155 MiB, two and 32 MiB at 114-118, with the same restore
    time)."""
    ahead: deque[tuple[list[_Op], asyncio.Future, int]] = deque()
    ahead_bytes = 0

    def room(extra: int = 0) -> bool:
        return len(ahead) < FETCH_AHEAD + extra and ahead_bytes < FETCH_AHEAD_BYTES

    planning: asyncio.Future | None = start_in(pool, batcher.next_batch)
    writing: asyncio.Future | None = None
    try:
        while True:
            # Top the window up: plan and start fetching until it is full.
            while planning is not None and (room() or planning.done()):
                batch = await asyncio.shield(planning)  # cancelled, it is still awaited
                planning = None
                if batch is None:
                    break
                ops, cids, nbytes = batch
                ahead.append((ops, asyncio.ensure_future(_fetch(source, cids)), nbytes))
                ahead_bytes += nbytes
                if room(1):
                    planning = start_in(pool, batcher.next_batch)
            if not ahead:
                break
            ops, fetching, nbytes = ahead.popleft()
            ahead_bytes -= nbytes
            plains = await fetching
            if writing is not None:
                await asyncio.shield(writing)
            writing = start_in(pool, writer.apply, ops, plains)
            if planning is None and room() and not batcher.exhausted:
                planning = start_in(pool, batcher.next_batch)
        if writing is not None:
            await asyncio.shield(writing)
            writing = None
    finally:
        for _, f, _ in ahead:
            f.cancel()
        await _settle(planning, writing, *(f for _, f, _ in ahead))


def _open_target(target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


async def restore_blocks(blocks: Iterator[tuple[bytes, Iterable[Entry]]], source: ChunkSource,
                         target: Path, include: list[bytes] | None, pool: Executor,
                         on_progress: Callable[[int, int], None] | None = None,
                         allow_special: bool = True,
                         overwrite: str = OVERWRITE_ALWAYS,
                         sparse: bool = True) -> RestoreSummary:
    """Restore catalog `blocks` below `target` (catalog paths kept in full). A block's
    entries may be `LazyEntries` (`iter_blocks_lazily`): a block outside `include` is then
    never decoded.

    `allow_special` False (pushed restores, unless the job and this agent allow them):
    setuid/setgid bits and file capabilities are stripped and device nodes skipped, each
    reported as an error of its entry.

    `overwrite` (OVERWRITE_CHOICES): what happens to an entry already in the target; kept
    ones are listed in `kept`, equal ones counted in `unchanged`.

    `sparse` (the default): a file's slices of all-zero chunks are left as holes, so a
    sparse file (a VM's disk image) takes as little room as it did on its host instead of
    its full size -- a restore must fit where the data came from. False writes every byte
    (a swap file, a file preallocated on purpose).

    Per-entry problems become `errors` in the summary; only fatal ones raise (the target
    cannot be opened, the appliance cannot be reached).
    """
    started = time.monotonic()
    summary = RestoreSummary()
    root_fd = await run_in(pool, _open_target, target)
    jobs = itertools.count(1)  # thread-safe enough: next() on count is atomic in CPython
    bad_dirs: set[bytes] = set()
    flt = _Filter(include, summary.errors)
    planner = _Planner(iter(blocks), flt, summary.errors, jobs, bad_dirs)
    helper = ThreadPoolExecutor(1, thread_name_prefix="rdr-create")
    writer = _Writer(root_fd, summary, jobs, bad_dirs, on_progress, helper, allow_special,
                     overwrite, sparse)
    finishing: asyncio.Future | None = None
    try:
        await _pipeline(_Batcher(planner.ops()), writer, source, pool)
        if writer.fallback:
            fallback, writer.fallback = writer.fallback, []
            await _pipeline(_Batcher(iter(fallback)), writer, source, pool)
        finishing = start_in(pool, writer.finish)
        await asyncio.shield(finishing)
    finally:
        await _settle(finishing)
        await run_in(pool, writer.close)
        helper.shutdown()
        os.close(root_fd)
    summary.duration = time.monotonic() - started
    if summary.errors:
        n = len(summary.errors)
        log.warning("restore to %s finished with %d error%s", target, n, "" if n == 1 else "s")
    return summary
