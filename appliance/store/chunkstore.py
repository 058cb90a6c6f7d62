"""Content-addressed chunk files on the data disk: ``chunks/<first 4 hex>/<id>``.

Chunks are written without fsync and made durable in one `syncfs` at commit. A `.dirty` marker
(created durably before the first unsynced write, removed after a sync) tells the next start
that a power cut may have left torn chunk files; `recover` then re-verifies just the chunk files
written since the marker, so a resumed session never trusts a chunk that did not survive.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rdr_format.chunkfile import ChunkDecoder, ChunkError, is_chunk_id
from rdr_format.fsutil import fsync_dir, start_writeback, syncfs, write_durable


class ChunkStore:
    def __init__(self, root: Path, writeback: bool = False) -> None:
        """WRITEBACK: start each chunk's write-out as it lands (`start_writeback`), so the
        commit's sync has little left to flush. Off by default: `python -m benchmarks
        commitsync` measured no shorter sync on this machine's disk (the kernel already
        flushes 1 GiB in about 0.1 s) and slower puts when uploads outrun the disk
        (docs/BENCHMARKS.md); a slower data disk may measure otherwise."""
        self.root = root
        self.writeback = writeback
        self.tmp = root / ".tmp"
        self.quarantine = root / ".quarantine"
        self._dirty_marker = root / ".dirty"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._dirty = False
        self._gen = 0  # puts started, to tell whether a sync covered all of them
        self._inflight = 0
        # Chunks whose put completed after the last sync began: id -> completion number.
        self._done = 0
        self._unsynced: dict[str, int] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)

    # --- paths and lookups ---
    def path(self, cid: str) -> Path:
        return self.root / cid[:4] / cid

    def has(self, cid: str) -> bool:
        return os.path.exists(self.path(cid))

    def missing(self, ids: Iterable[str]) -> list[str]:
        return [cid for cid in ids if not os.path.exists(self.path(cid))]

    def touch_missing(self, ids: Iterable[str]) -> list[str]:
        """Mark existing chunks as in use now and return the absent ones.

        GC never deletes a chunk touched after its cutoff, so every path that decides to rely
        on an existing chunk (known-chunk query, commit) goes through here."""
        missing = []
        now = time.time()  # explicit: the kernel's own stamp can lag time.time() by a tick
        for cid in ids:
            try:
                os.utime(self.path(cid), (now, now))
            except FileNotFoundError:
                missing.append(cid)
        return missing

    def quarantine_chunk(self, cid: str) -> None:
        self.quarantine.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(cid), self.quarantine / cid)

    def size_of(self, cid: str) -> int:
        return os.stat(self.path(cid)).st_size

    def read(self, cid: str) -> bytes:
        with open(self.path(cid), "rb") as f:
            return f.read()

    def _decoder(self) -> ChunkDecoder:
        dec = getattr(self._local, "dec", None)
        if dec is None:
            dec = self._local.dec = ChunkDecoder()
        return dec

    def read_plain(self, cid: str) -> bytes:
        """Read, verify and decode a chunk: any damage raises ChunkError, never wrong bytes."""
        return self._decoder().decode(self.read(cid), cid)

    def iter_ids(self) -> Iterator[str]:
        with os.scandir(self.root) as top:
            for d in top:
                if len(d.name) != 4 or not d.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(d.path) as inner:
                    for f in inner:
                        if is_chunk_id(f.name):
                            yield f.name

    # --- writing ---
    def put(self, cid: str, data: bytes | bytearray | memoryview) -> bool:
        """Verify a chunk file against its id and store it. Returns False if it was already
        present (uploads are idempotent). Raises ChunkError, storing nothing, on a mismatch."""
        self._decoder().decode(data, cid)
        target = self.path(cid)
        if os.path.exists(target):
            return False
        with self._lock:
            if not self._dirty:
                write_durable(self._dirty_marker, str(time.time()).encode())
                fsync_dir(self.root)
                self._dirty = True
            self._gen += 1
            self._inflight += 1
        tmp = self.tmp / f"{cid}.{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.writeback:
                    f.flush()
                    start_writeback(f.fileno())
            now = time.time()  # GC compares mtimes with time.time(), so stamp with it too
            os.utime(tmp, (now, now))
            try:
                os.rename(tmp, target)
            except FileNotFoundError:
                target.parent.mkdir(exist_ok=True)
                os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not also leak partial files
            raise
        finally:
            with self._lock:
                self._inflight -= 1
        with self._lock:
            self._done += 1
            self._unsynced[cid] = self._done
        return True

    def durable(self, ids: set[str]) -> bool:
        """Has a sync covered every chunk of `ids` that this process wrote?"""
        with self._lock:
            return not any(cid in ids for cid in self._unsynced)

    def sync(self) -> None:
        """Make every chunk whose put has returned durable (one syncfs). The dirty marker is
        cleared only if no put started or was running meanwhile, so it never hides a chunk
        that the sync did not cover."""
        with self._lock:
            gen, quiet, done = self._gen, self._inflight == 0, self._done
        syncfs(self.root)
        with self._lock:
            if self._unsynced:
                self._unsynced = {c: n for c, n in self._unsynced.items() if n > done}
            if self._dirty and quiet and gen == self._gen and self._inflight == 0:
                self._dirty_marker.unlink(missing_ok=True)
                self._dirty = False

    def recover(self) -> list[str]:
        """After an unclean stop, re-verify chunk files written since the last sync and remove
        the torn ones. Returns the ids removed."""
        try:
            since = float(self._dirty_marker.read_text()) - 2.0
        except (FileNotFoundError, ValueError):
            since = None
        removed: list[str] = []
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        if since is None and not self._dirty_marker.exists():
            return removed
        dec = self._decoder()
        with os.scandir(self.root) as top:
            for d in top:
                if len(d.name) != 4 or not d.is_dir(follow_symlinks=False):
                    continue
                if since is not None and d.stat().st_mtime < since:
                    continue
                with os.scandir(d.path) as inner:
                    for f in inner:
                        if not is_chunk_id(f.name):
                            continue
                        if since is not None and f.stat().st_mtime < since:
                            continue
                        try:
                            with open(f.path, "rb") as fh:
                                dec.decode(fh.read(), f.name)
                        except (ChunkError, OSError):
                            os.unlink(f.path)
                            removed.append(f.name)
        syncfs(self.root)
        self._dirty_marker.unlink(missing_ok=True)
        return removed
