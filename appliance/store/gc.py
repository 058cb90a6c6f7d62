"""Garbage collection: delete chunk files no live snapshot references.

Mark: the sorted ``chunks.idx`` of every snapshot are merged into one sorted stream, and the
chunk directory is walked in the same (hex) order, so memory stays flat however many chunks
there are. Sweep: a chunk is deleted only if it is unreferenced *and* its mtime is older than
the cutoff. Every path that makes a chunk "in use" touches its mtime -- upload, the known-chunk
query, and a commit's final check -- so the cutoff protects what open sessions and commits in
flight rely on:

    cutoff = min(GC start, creation of the oldest open session) - grace

and each deletion re-checks the mtime under the commit lock, so a commit that lands during the
sweep and reuses an old chunk (touching it) keeps it. A commit does not touch the chunks its
host's newest snapshot also references (`Datastore._unvouched`): that snapshot is on disk under
the commit lock, so either this GC marked it or it was committed after this GC started, and by
the same rule its own chunks are marked or younger than the cutoff.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from rdr_format.chunkfile import is_chunk_id

from .lock import exclusive
from .progress import Progress


@dataclass(slots=True)
class GcResult:
    dry_run: bool
    cutoff: float
    snapshots: int = 0
    live_chunks: int = 0
    chunks_scanned: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    chunks_too_young: int = 0
    sessions_aborted: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def merged_ids(streams: Iterable[Iterable[str]]) -> Iterator[str]:
    """Sorted, de-duplicated union of sorted id streams."""
    last = None
    for cid in heapq.merge(*streams):
        if cid != last:
            yield cid
            last = cid


def sorted_difference(items: Iterable[str], minus: Iterable[str]) -> Iterator[str]:
    """Items of the sorted stream `items` that the sorted stream `minus` lacks, in constant
    memory (both sides can hold millions of ids)."""
    other = iter(minus)
    cur = next(other, None)
    for x in items:
        while cur is not None and cur < x:
            cur = next(other, None)
        if cur != x:
            yield x


def shard_dirs(root: os.PathLike[str] | str) -> list[str]:
    names = []
    with os.scandir(root) as it:
        for d in it:
            if len(d.name) == 4 and d.is_dir(follow_symlinks=False):
                try:
                    int(d.name, 16)
                except ValueError:
                    continue
                names.append(d.name)
    return sorted(names)


class GarbageCollector:
    #: Deletions done under one hold of the commit lock (commits wait at most this long).
    BATCH = 512

    def __init__(self, store, *, grace: float, stale_session_age: float) -> None:
        # `store` is a Datastore; typed loosely to avoid an import cycle.
        self.store = store
        self.grace = grace
        self.stale_session_age = stale_session_age

    def run(self, progress: Progress, dry_run: bool = False) -> GcResult:
        st = self.store
        started = time.time()
        aborted = 0
        if not dry_run:
            aborted = st.abort_stale_sessions(self.stale_session_age)
            st.finish_removals()  # a killed prune's directories: their chunks are dead too
        sessions = st.index.open_sessions()
        cutoff = min([started] + [s.created_at for s in sessions]) - self.grace
        res = GcResult(dry_run=dry_run, cutoff=cutoff, sessions_aborted=aborted)

        snaps = list(st.snapshots.scan())
        res.snapshots = len(snaps)
        indexes = [st.snapshots.chunk_index(h, s) for h, s in snaps]
        live = merged_ids(iter(idx) for idx in indexes)
        nxt = next(live, None)

        shards = shard_dirs(st.chunks.root)
        doomed: list[str] = []
        for i, shard in enumerate(shards):
            with os.scandir(st.chunks.root / shard) as it:
                ids = sorted(e.name for e in it if is_chunk_id(e.name))
            for cid in ids:
                res.chunks_scanned += 1
                while nxt is not None and nxt < cid:
                    nxt = next(live, None)
                if nxt == cid:
                    res.live_chunks += 1
                    continue
                doomed.append(cid)
            if len(doomed) >= self.BATCH or i == len(shards) - 1:
                self._sweep(doomed, res)
                doomed = []
            progress((i + 1) / max(len(shards), 1),
                         f"{res.chunks_scanned} chunks scanned, {res.chunks_removed} removed")
        if doomed:
            self._sweep(doomed, res)
        return res

    def _sweep(self, ids: list[str], res: GcResult) -> None:
        if not ids:
            return
        chunks = self.store.chunks
        with exclusive(self.store.root / "commit.lock"):
            for cid in ids:
                path = chunks.path(cid)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if st.st_mtime >= res.cutoff:
                    res.chunks_too_young += 1
                    continue
                if not res.dry_run:
                    os.unlink(path)
                res.chunks_removed += 1
                res.bytes_removed += st.st_size
