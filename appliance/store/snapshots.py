"""Snapshot directories: ``snapshots/<host>/<id>/{manifest.json,chunks.idx}``.

A snapshot becomes visible by one atomic rename of a fully written, fsynced temporary
directory, after every chunk it references has been made durable. Whatever a crash leaves
behind is either a complete snapshot or a ``.tmp-`` directory that `reconcile` removes.
Removal renames the directory to ``.trash-<id>`` before deleting it (see `remove`).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rdr_format.catalog import CatalogError
from rdr_format.fsutil import fsync_dir, write_durable
from rdr_format.manifest import ChunkIndex, Manifest, write_chunk_index

from .errors import NotFound

SNAP_FORMAT = "%Y-%m-%dT%H-%M-%SZ"


def snapshot_id(when: datetime) -> str:
    return when.astimezone(UTC).strftime(SNAP_FORMAT)


def parse_snapshot_id(snap: str) -> datetime:
    return datetime.strptime(snap, SNAP_FORMAT).replace(tzinfo=UTC)


def is_snapshot_id(snap: str) -> bool:
    try:
        parse_snapshot_id(snap)
    except ValueError:
        return False
    return True


def next_snapshot_id(now: datetime, latest: str | None) -> str:
    """The id for a snapshot received at `now`: its UTC second, moved past the host's latest
    snapshot if the clock went back or two commits share a second, so ids stay ordered."""
    snap = snapshot_id(now)
    if latest is not None and snap <= latest:
        snap = snapshot_id(parse_snapshot_id(latest) + timedelta(seconds=1))
    return snap


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._idx_cache: OrderedDict[tuple[str, str], ChunkIndex] = OrderedDict()
        self._lock = threading.Lock()

    def dir(self, host: str, snap: str) -> Path:
        return self.root / host / snap

    def write(self, manifest: Manifest, chunk_ids: set[str]) -> None:
        host_dir = self.root / manifest.host
        host_dir.mkdir(exist_ok=True)
        tmp = host_dir / f".tmp-{manifest.snapshot}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_chunk_index(tmp / "chunks.idx", chunk_ids)
        write_durable(tmp / "manifest.json", manifest.to_json())
        fsync_dir(tmp)
        os.rename(tmp, host_dir / manifest.snapshot)
        fsync_dir(host_dir)

    def manifest(self, host: str, snap: str) -> Manifest:
        try:
            data = (self.dir(host, snap) / "manifest.json").read_bytes()
        except FileNotFoundError:
            raise NotFound("no_such_snapshot", f"host {host!r} has no snapshot {snap!r}") from None
        return Manifest.from_json(data)

    def chunk_index(self, host: str, snap: str) -> ChunkIndex:
        key = (host, snap)
        with self._lock:
            idx = self._idx_cache.get(key)
            if idx is not None:
                self._idx_cache.move_to_end(key)
                return idx
        try:
            idx = ChunkIndex(self.dir(host, snap) / "chunks.idx")
        except FileNotFoundError:
            raise NotFound("no_such_snapshot", f"host {host!r} has no snapshot {snap!r}") from None
        with self._lock:
            self._idx_cache[key] = idx
            while len(self._idx_cache) > 32:
                # Dropped, never closed: a caller may still be reading it (replication walks
                # every snapshot's index at once). Its mapping is unmapped when the last
                # reference goes.
                self._idx_cache.popitem(last=False)
        return idx

    def trash_dir(self, host: str, snap: str) -> Path:
        return self.root / host / f".trash-{snap}"

    def remove(self, host: str, snap: str) -> None:
        """Delete a snapshot directory: rename it out of sight first (every reader skips
        dot-names), so a crash mid-delete never leaves a half-removed snapshot that looks
        complete. Idempotent: a removal a kill interrupted is finished by calling it again."""
        with self._lock:
            # Not closed, for the same reason as an evicted one: a mapping of a deleted file
            # stays readable until its last reader lets go.
            self._idx_cache.pop((host, snap), None)
        d = self.dir(host, snap)
        gone = self.trash_dir(host, snap)
        try:
            os.rename(d, gone)
        except FileNotFoundError:
            pass  # renamed (or never there) before a kill: only the trash may be left
        else:
            fsync_dir(d.parent)
        shutil.rmtree(gone, ignore_errors=True)

    def scan(self, clean: bool = False) -> Iterator[tuple[str, str]]:
        """Every complete snapshot on disk. With `clean`, also remove leftovers of interrupted
        writes -- only when no commit or removal can be in progress (at start-up)."""
        if not self.root.exists():
            return
        for host_dir in sorted(self.root.iterdir()):
            if not host_dir.is_dir():
                continue
            for d in sorted(host_dir.iterdir()):
                if d.name.startswith((".tmp-", ".trash-")):
                    if clean:
                        shutil.rmtree(d, ignore_errors=True)
                elif is_snapshot_id(d.name) and (d / "manifest.json").exists():
                    yield host_dir.name, d.name

    def load_for_reconcile(self, host: str, snap: str) -> Manifest | None:
        try:
            return self.manifest(host, snap)
        except (CatalogError, ValueError, KeyError, TypeError):
            return None
